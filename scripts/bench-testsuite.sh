#!/usr/bin/env bash
# What the test suite costs (issue 28): a cold and a warm `scripts/test.sh` of each given commit, side by side, on
# this machine, one after the other.
#
#   scripts/bench-testsuite.sh 5bbe17a HEAD        # before and after the one-crate test suite
#
# Each commit is checked out in a worktree under $BENCH_DIR (default /tmp/outpost-bench-testsuite) with its own
# fresh CARGO_TARGET_DIR, so the cold run builds everything (dependencies included) as a fresh clone on CI does;
# the warm run follows at once on the same target dir, after touching `src/lib.rs` as a developer's one-line edit
# does (the library rebuilds and every test binary links again: what one test crate saves). For each run: the wall time of the build of the tests
# (`cargo test --features demo --no-run`: compile and link, told apart from running) and of the whole
# `scripts/test.sh`. Prints one markdown table.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${BENCH_DIR:-/tmp/outpost-bench-testsuite}"
[ "$#" -gt 0 ] || { echo "usage: $0 COMMIT [COMMIT...]" >&2; exit 2; }
mkdir -p "$dir"
rows=()
for c in "$@"; do
    sha=$(git -C "$repo" rev-parse --short "$c")
    wt="$dir/wt-$sha"
    target="$dir/target-$sha"
    rm -rf "$wt" "$target"
    git -C "$repo" worktree add -f --detach "$wt" "$sha" >/dev/null
    for run in cold warm; do
        [ "$run" = warm ] && touch "$wt/src/lib.rs"
        echo "== $sha $run: cargo test --no-run" >&2
        t0=$(date +%s.%N)
        (cd "$wt" && CARGO_TARGET_DIR="$target" cargo test --features demo --no-run -q >/dev/null 2>&1)
        t1=$(date +%s.%N)
        echo "== $sha $run: scripts/test.sh" >&2
        status=0
        (cd "$wt" && CARGO_TARGET_DIR="$target" scripts/test.sh >"$dir/$sha-$run.log" 2>&1) || status=$?
        t2=$(date +%s.%N)
        rows+=("| $sha | $run | $(printf '%.0f' "$(echo "$t1 - $t0" | bc)") | $(printf '%.0f' "$(echo "$t2 - $t1" | bc)") | $status |")
        # Each row as it is measured, so a long run that is cut short still says what it measured.
        echo "${rows[-1]}" | tee -a "$dir/rows.md" >&2
    done
    git -C "$repo" worktree remove --force "$wt"
done
echo
echo "| commit | run | build of the tests s (cold: everything; warm: the library and the test binaries) | scripts/test.sh s (after that build) | exit |"
echo "|---|---|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); logs in $dir"
