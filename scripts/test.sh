#!/usr/bin/env bash
# The full test suite: formatting, lints, dependency direction, the deployment files, simulator swarms (200 fixed
# seeds, 500 with a hostile node, a fresh range of each), the canaries, the example and the
# demo, every crate's tests (unit, property, integration, simulator, doc, fuzz regressions),
# then each fuzz target briefly when a nightly toolchain is present.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The core and the simulator stay free of I/O runtimes, storage engines and the shell crate.
# `cargo tree` runs first on its own, so that its failure fails this script instead of passing
# an empty listing to grep.
for crate in edgesync-proto edgesync-sim; do
  tree=$(cargo tree --locked -p "$crate" -e normal --prefix none)
  if grep -E '^(tokio|quinn|rocksdb|librocksdb-sys|edgesync) ' <<<"$tree"; then
    echo "$crate depends on a forbidden crate" >&2
    exit 1
  fi
done
# Planted bugs and the conformance suite (the core's `testing` feature) stay out of the daemon.
tree=$(cargo tree --locked -p edgesync -e normal,features --prefix none)
if grep -F 'edgesync-proto feature "testing"' <<<"$tree"; then
  echo "the edgesync daemon is built with the core's testing feature" >&2
  exit 1
fi
# The deployment files: manifests, Secrets, embedded configurations, Dockerfile, dashboard.
scripts/check-deploy.sh
cargo build --release --locked -p edgesync-sim
sim="$CARGO_TARGET_DIR/release/edgesync-sim"
"$sim" swarm --seeds 1..201
# One hostile node in every run: honest nodes must converge, lose nothing and keep their limits.
"$sim" swarm --seeds 1..501 --byzantine 1
# Fixed seeds never explore: every run also draws a fresh range (printed, so that a failure
# reproduces with `edgesync-sim run --seed S` and the arguments the swarm prints). A seed that
# fails here goes into simulations/regressions.txt.
fresh=$(( ($(date +%s) % 100000) * 1000 + 1000000 ))
echo "fresh seeds: $fresh..$((fresh + 100)) (honest), $((fresh + 100))..$((fresh + 150)) (byzantine)"
"$sim" swarm --seeds "$fresh..$((fresh + 100))"
"$sim" swarm --seeds "$((fresh + 100))..$((fresh + 150))" --byzantine 1
# Simulated days with retention and pruning on (fixed seeds and a few fresh ones).
"$sim" swarm --days 3 --seeds 1..6
"$sim" swarm --days 3 --seeds "$((fresh + 150))..$((fresh + 153))"
for canary in ack-before-persist drop-remote-change vc-off-by-one patch-ack-before-persist; do
  "$sim" swarm --seeds 1..21 --canary "$canary"
done
# The library example and the demo, as a user runs them.
cargo run --locked -q --example offline_first
cargo run --locked -q --example follow_feed
cargo run --locked -q --bin edgesync -- demo
cargo test --workspace --locked --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
# Each fuzz target briefly (they need a nightly toolchain; their regression inputs are replayed
# above by `cargo test` either way).
if cargo +nightly --version >/dev/null 2>&1; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
  fi
  (
    cd fuzz
    cargo +nightly run --quiet --example seed_corpus
    for target in decode session remote_change snapshot; do
      cargo +nightly fuzz run -O "$target" -- -max_total_time=30 -max_len=8192
    done
  )
else
  echo "no nightly toolchain: fuzz targets not run (their regression inputs were replayed)"
fi
