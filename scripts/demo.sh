#!/usr/bin/env bash
# The main job, on embedded defaults: `edgesync demo` runs a cloud and two gateways on loopback
# (real RocksDB stores, QUIC with mutual TLS from a throwaway fleet CA), cuts one gateway's
# uplink, ingests on both sides of the cut, heals it, and checks that every node holds the same
# readings, each once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo run --locked -q --bin edgesync -- demo
