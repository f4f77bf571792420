#!/usr/bin/env bash
# CI step: the systemd unit's static checks, the shipping aarch64 binary (the slim device build, static, in the
# `dist` profile: fat LTO, stripped), its size budget, and its labels under qemu against the native build for every
# model form a bundle carries. Called from .ci/run; also runnable by hand.
#   OUTPOST_CI_IMAGES=N        compare on the first N test images only (default: all 1500)
#   OUTPOST_SIZE_BUDGET=BYTES  the most the stripped binary may weigh (default below; BENCHMARKS.md, issue 19)
# Target dirs persist in ~/.cache (outpost-target, outpost-target-cross), so a warm run only relinks.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "=== cross/ci.sh: $* ($(( $(date +%s) - start ))s)"; }

step "deploy/check.sh"
deploy/check.sh

step "cross/build.sh aarch64 (slim device build, dist profile)"
# (No `tee /dev/stderr`: when stdout and stderr are one file, reopening /dev/stderr truncates it.)
build_out=$(mktemp)
trap 'rm -f "$build_out"' EXIT
OUTPOST_PROFILE=dist OUTPOST_FEATURES=slim cross/build.sh aarch64 >"$build_out"
cat "$build_out"
bin=$(tail -1 "$build_out")

step "size budget"
budget="${OUTPOST_SIZE_BUDGET:-24900000}"
size=$(stat -c %s "$bin")
echo "stripped aarch64 binary: $size bytes ($(( size / 1024 )) KiB), budget $budget bytes"
if [ "$size" -gt "$budget" ]; then
  echo "cross/ci.sh: the device binary grew past its budget: find what added the bytes (cargo bloat --crates," >&2
  echo "BENCHMARKS.md issue 19) or, if it is worth them, raise OUTPOST_SIZE_BUDGET's default here." >&2
  exit 1
fi

step "deploy/check.sh with ExecStart = the aarch64 binary"
OUTPOST_BIN="$bin" deploy/check.sh >/dev/null

step "cross/check.sh aarch64"
OUTPOST_PROFILE=dist OUTPOST_FEATURES=slim cross/check.sh aarch64 ${OUTPOST_CI_IMAGES:-}

step "done"
