#!/usr/bin/env bash
# Bulkhead's two entry points on a fresh machine (Debian 12, root):
#   ./dev.sh demo   builds everything and runs the lab demo (main job)
#   ./dev.sh test   builds everything and runs every test
# Both install what they need first (scripts/setup.sh, idempotent).
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

cmd="${1:-}"
case "$cmd" in
  demo)
    ./scripts/setup.sh
    cargo build --release --locked -p bulkhead
    exec ./target/release/bulkhead lab demo
    ;;
  test)
    ./scripts/setup.sh
    exec ./scripts/test.sh
    ;;
  *)
    echo "usage: ./dev.sh demo | test" >&2
    exit 2
    ;;
esac
