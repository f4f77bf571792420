#!/usr/bin/env bash
# Fuzzes the signed-bundle decoder with cargo-fuzz (libFuzzer, nightly). Run by hand, not in CI.
# Usage: scripts/fuzz.sh [target...]          (default: bundle_header manifest_decode command_decode, in turn)
# Env:   OUTPOST_FUZZ_SECONDS   seconds per target (default 300)
#        OUTPOST_FUZZ_MAX_LEN   largest input libFuzzer makes (default 4096)
#        OUTPOST_FUZZ_ARGS      extra libFuzzer flags, e.g. "-seed=1 -jobs=2"
#        CARGO_TARGET_DIR       default ~/.cache/outpost-fuzz-target (never inside the clone)
# Seeds: valid bundles made by `write_bundle` (fuzz/src/bin/gen_seeds.rs) are written into fuzz/corpus/<target>/
# on every run; fuzz/seeds/<target>/ (committed copies) is read as an extra corpus. Crashes land in
# fuzz/artifacts/<target>/; to keep one as a regression, copy it to fuzz/regressions/<target>/ and run
# `cargo test --test it fuzz_regressions::`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo/fuzz"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-fuzz-target}"
seconds="${OUTPOST_FUZZ_SECONDS:-300}"
max_len="${OUTPOST_FUZZ_MAX_LEN:-4096}"
read -r -a extra <<<"${OUTPOST_FUZZ_ARGS:-}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(bundle_header manifest_decode command_decode)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Optimised + debug assertions + AddressSanitizer (cargo-fuzz defaults); all bins, gen_seeds included.
cargo +nightly fuzz build
bin_dir="$CARGO_TARGET_DIR/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
"$bin_dir/gen_seeds" corpus

# Caps: the largest allocation the format allows is one 8 MiB section; anything above 64 MiB in one malloc, or
# 512 MiB resident, is a finding.
limits=(-rss_limit_mb=512 -malloc_limit_mb=64 -timeout=10 -max_len="$max_len")

status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/fuzz-$(date +%Y%m%d-%H%M%S).log"
  echo "== $t: ${seconds}s, log $repo/fuzz/$log"
  before=$(ls "corpus/$t" | wc -l)
  marker=$(mktemp)
  start=$(date +%s)
  set +e
  cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" "${limits[@]}" -print_final_stats=1 "${extra[@]}" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  took=$(($(date +%s) - start))
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  crashes=$(find "artifacts/$t" -type f ! -name '*.log' -newer "$marker" 2>/dev/null | sort || true)
  rm -f "$marker"
  summary+=("$t: exit $rc, ${took}s, ${execs:-?} execs (${rate:-?}/s), peak RSS ${rss:-?} MB, corpus $before -> $(ls "corpus/$t" | wc -l) files")
  summary+=("  last: ${last:-none}")
  if [ -n "$crashes" ]; then
    status=1
    while read -r c; do summary+=("  CRASH: $repo/fuzz/$c"); done <<<"$crashes"
  elif [ "$rc" -ne 0 ]; then
    status=1
    summary+=("  libFuzzer failed without an artifact: see the log")
  fi
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
