#!/usr/bin/env bash
# Serving benchmark, HTTP daemon vs in-process engine (issue 3).
#
#   scripts/bench-serve.sh                                    # edge-int8, mobilenetv2-fp32, mobilenetv2-int8
#   scripts/bench-serve.sh edge-int8 mobilenetv2-fp32         # some of them
#   scripts/bench-serve.sh -- --seconds 10 --clients 2        # flags after -- go to benches/serve.rs
#
# Builds the release daemon (`cargo build --release --bin outpost`), then runs `cargo bench --bench serve` with
# OUTPOST_BIN pointing at it. The bench starts and stops its own daemons on 127.0.0.1 (port 0) and prints the table.
# Environment: CARGO_TARGET_DIR (default ~/.cache/outpost-target).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"

models=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    models+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
for m in "${models[@]}"; do
    [ -f "models/$m.onnx" ] || { echo "error: no models/$m.onnx" >&2; exit 2; }
done

echo "== building the release daemon (cargo build --release --bin outpost)" >&2
cargo build --release --bin outpost -q
echo "== building the serve bench (cargo bench --bench serve --no-run)" >&2
cargo bench --bench serve --no-run -q 2>&1 | grep -v '^ *Executable' >&2 || true

OUTPOST_BIN="$CARGO_TARGET_DIR/release/outpost" exec cargo bench -q --bench serve -- "${models[@]}" "$@"
