#!/usr/bin/env bash
# Inference benchmark, tract vs onnxruntime (issues 2 and 13), on golden input #0 of each model, one table.
#
#   scripts/bench.sh                       # the six default models
#   scripts/bench.sh edge-int8 edge-fp32   # some of them
#   BENCH_SECONDS=5 BENCH_ROUNDS=3 BENCH_THREADS="1 2" scripts/bench.sh
#
# For each model, in the same run, alternating: tract through `cargo bench --bench inference` (the library's Engine:
# cold load from ONNX and from NNEF, each thread count, a batch), then onnxruntime through models/bench_ort.py at each
# thread count (the runtime that goes first flips every round). Then a markdown table (model | runtime | lever |
# cold load | load to first answer | p50 | p99 | tract/onnxruntime at the same thread count), the issue-13 ratios
# and the machine.
#
# Environment: OUTPOST_VENV (python venv with models/requirements.txt; created if missing),
# CARGO_TARGET_DIR (default ~/.cache/outpost-target), BENCH_SECONDS (timed seconds per model, runtime and lever,
# default 3), BENCH_ROUNDS (default 1; the table shows medians), BENCH_THREADS (thread counts, default "1 2"),
# BENCH_BATCH (tract batch lever, default 8; 0 skips), BENCH_OUT (where the raw JSON lines go).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
venv="${OUTPOST_VENV:-$HOME/.cache/outpost-models-venv}"
seconds="${BENCH_SECONDS:-3}"
rounds="${BENCH_ROUNDS:-1}"
threads="${BENCH_THREADS:-1 2}"
batch="${BENCH_BATCH:-8}"
if [ "$#" -gt 0 ]; then
    models=("$@")
else
    models=(edge-fp32 edge-qdq edge-int8 cloud-fp32 mobilenetv2-fp32 mobilenetv2-int8)
fi
for m in "${models[@]}"; do
    [ -f "models/$m.onnx" ] || { echo "error: no models/$m.onnx" >&2; exit 2; }
done

if [ ! -x "$venv/bin/python" ]; then
    echo "== no python venv at $venv: creating it (python3 -m venv) and installing models/requirements.txt" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --disable-pip-version-check -r models/requirements.txt >&2
fi
py="$venv/bin/python"
"$py" -c 'import onnxruntime' 2>/dev/null || {
    echo "== onnxruntime missing in $venv: pip install -r models/requirements.txt" >&2
    "$py" -m pip install --disable-pip-version-check -r models/requirements.txt >&2
}

echo "== building the tract bench (cargo bench --bench inference --no-run)" >&2
cargo bench --bench inference --no-run -q 2>&1 | grep -v '^ *Executable' >&2 || true

out="${BENCH_OUT:-$CARGO_TARGET_DIR/bench/inference-$(date +%Y%m%dT%H%M%S).jsonl}"
mkdir -p "$(dirname "$out")"
: > "$out"

run_tract() {
    cargo bench -q --bench inference -- --json --seconds "$seconds" --threads "${threads// /,}" --batch "$batch" "$1" |
        tee -a "$out"
}
run_ort() {
    local m="$1" iters warmup
    # Size N like the tract side does: a short calibration run, then about $seconds of timed runs (at least 10).
    iters=$("$py" models/bench_ort.py --model "models/$m.onnx" --spec "models/$m.spec.json" --iters 10 --warmup 3 |
        "$py" -c "import json,sys; r=json.loads(sys.stdin.read()); print(max(10, min(200000, int($seconds*1e6/max(r['mean_us'],1e-3)))))")
    warmup=$(( iters / 10 > 3 ? iters / 10 : 3 ))
    for t in $threads; do
        "$py" models/bench_ort.py --model "models/$m.onnx" --spec "models/$m.spec.json" \
            --iters "$iters" --warmup "$warmup" --threads "$t" --json | tee -a "$out"
    done
}

for ((r = 1; r <= rounds; r++)); do
    for m in "${models[@]}"; do
        echo "== round $r/$rounds: $m" >&2
        if (( r % 2 == 1 )); then run_tract "$m"; run_ort "$m"; else run_ort "$m"; run_tract "$m"; fi
    done
done

cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
flags=$(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2-)
has() { if grep -qw "$1" <<<"$flags"; then echo "$1 yes"; else echo "$1 no"; fi; }
echo
echo "Machine: $cpu, $(nproc) cores online; $(has avx2), $(has fma), $(has avx512f), $(has avx512_vnni), $(has avxvnni);" \
    "$(uname -sm); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "Thread counts: $threads (intra-op, both runtimes); golden input #0; ${seconds}s timed per model, runtime and lever;" \
    "$rounds round(s)."
echo "Raw results: $out"
echo
"$py" models/bench_table.py "$out"
