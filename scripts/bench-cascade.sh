#!/usr/bin/env bash
# Cascade benchmark, edge -> cloud (issue 6): accuracy of edge-only, cloud-only and the cascade for each hardness
# score (max-prob, margin, entropy) over a grid of thresholds, with the fraction forwarded, on the held-out split.
#
#   scripts/bench-cascade.sh                                  # edge-int8 -> cloud-fp32 on models/data/test
#   scripts/bench-cascade.sh --edge edge-fp32 --tolerance 0.5 # flags go to benches/cascade.rs (--help lists them)
#   BENCH_PROFILE=release scripts/bench-cascade.sh            # through `cargo bench` (release build of everything)
#
# Builds benches/cascade.rs and runs it; the markdown tables and the operating points go to stdout, progress and
# timings to stderr. The numbers are accuracies, not latencies, so the default is the dev profile: Cargo.toml
# compiles every dependency (tract) at opt-level 3 there too, so it gives the same predictions in seconds of
# running and without the 15+ minute release build of tract (`cargo test --profile dev --bench cascade -- ...`
# runs the harness-less bench as a plain binary). BENCH_PROFILE=release uses `cargo bench --bench cascade`.
# Environment: CARGO_TARGET_DIR (default ~/.cache/outpost-target), BENCH_PROFILE (dev | release, default dev).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
profile="${BENCH_PROFILE:-dev}"

case "$profile" in
    dev)
        echo "== building and running benches/cascade.rs (dev profile, dependencies at opt-level 3)" >&2
        exec cargo test -q --profile dev --bench cascade -- "$@"
        ;;
    release)
        echo "== building and running benches/cascade.rs (cargo bench, release profile)" >&2
        exec cargo bench -q --bench cascade -- "$@"
        ;;
    *)
        echo "error: BENCH_PROFILE must be dev or release, not '$profile'" >&2
        exit 2
        ;;
esac
