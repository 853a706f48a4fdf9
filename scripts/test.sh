#!/usr/bin/env bash
# Every test: unit and property tests, end-to-end tests with real packets (root), and the
# conformance folder. Called by `./dev.sh test` after setup.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
cargo build --release --locked -p bulkhead -p bulkhead-cni
export BULKHEAD_BIN="$PWD/target/release/bulkhead"
# Leftovers from a crashed earlier run would make tests fail for the wrong reason.
"$BULKHEAD_BIN" lab cleanup
cargo test --release --locked --workspace -- --test-threads=2
# Benchmarks must keep compiling; running them is `cargo bench` (see README). Built with the
# release profile and the workspace's features, as the tests above: only the bench targets
# compile here (about 30 s), where `cargo bench --no-run -p bulkhead-bench` rebuilt a dozen
# crates under other features (over 2 minutes).
cargo build --release --locked --workspace --benches
echo "all tests passed in $(( $(date +%s) - start ))s"
