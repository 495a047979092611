#!/usr/bin/env bash
# The full test suite: formatting, lints, every crate's tests (unit, property, integration,
# doc), and the dependency-direction check.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# proto must stay free of I/O runtimes and storage engines.
if cargo tree -p edgesync-proto -e normal --prefix none | grep -E '^(tokio|quinn|rocksdb|librocksdb-sys|edgesync) ' ; then
  echo "edgesync-proto depends on a forbidden crate" >&2
  exit 1
fi
cargo nextest run --workspace --locked --no-fail-fast
cargo test --workspace --locked --doc
