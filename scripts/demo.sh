#!/usr/bin/env bash
# The main job, on embedded defaults: a cloud and four gateways in a star split into two
# halves that both keep ingesting (50-reading bursts on each side), then healed; the checkers
# confirm every replica converged and no acknowledged reading was lost or doubled.
# (A deterministic simulation of the real core; `edgesync demo` over QUIC comes with the daemon.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo run --release --locked -q -p edgesync-sim -- run --seed 1 --nodes 5 --topology star --scenario split-brain
