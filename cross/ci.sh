#!/usr/bin/env bash
# CI step for issue 7: the systemd unit's static checks, the aarch64 static cross build, and its label comparison
# under qemu against the native build. Called from .ci/run; also runnable by hand.
#   OUTPOST_CI_IMAGES=N   compare on the first N test images only (default: all 1500)
# Target dirs persist in ~/.cache (outpost-target, outpost-target-cross), so a warm run only relinks.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "=== cross/ci.sh: $* ($(( $(date +%s) - start ))s)"; }

step "deploy/check.sh"
deploy/check.sh

step "cross/build.sh aarch64 (and the library's unit tests under qemu-aarch64-static)"
# (No `tee /dev/stderr`: when stdout and stderr are one file, reopening /dev/stderr truncates it.)
build_out=$(mktemp)
trap 'rm -f "$build_out"' EXIT
OUTPOST_CROSS_UNIT_TESTS=1 cross/build.sh aarch64 >"$build_out"
cat "$build_out"
bin=$(tail -1 "$build_out")

step "deploy/check.sh with ExecStart = the aarch64 binary"
OUTPOST_BIN="$bin" deploy/check.sh >/dev/null

step "cross/check.sh aarch64"
cross/check.sh aarch64 ${OUTPOST_CI_IMAGES:-}

step "done"
