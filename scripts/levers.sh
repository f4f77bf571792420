#!/usr/bin/env bash
# The binary-size levers of issue 19, side by side in one run: builds `outpost` natively for each (features,
# profile) pair, then times the edge model and MobileNetV2 with `outpost infer --bench`, one cold process per
# measurement, the builds interleaved round by round (this VM's speed drifts, so no build gets a quiet minute the
# others did not). Prints one Markdown table: stripped size, cold load, load to first answer, p50, p99.
#
#   scripts/levers.sh [ROUNDS]            (default 5 rounds of 1.5 s per model and build)
#   LEVERS="full:dist-thin slim:dist ..."  the builds (default: all below)
#   LEVER_BUILD=0                          time the binaries an earlier run left in $LEVER_DIR, without building
#
# A slim build (no ONNX front end) runs the NNEF forms of the models (compiled here by outpostctl, as bundles carry
# them); the full build runs the ONNX files, and their NNEF forms too (cold start of either form, same run).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
seconds="${LEVER_SECONDS:-1.5}"
levers="${LEVERS:-full:dist-thin slim:dist slim:dist-lean slim:dist-small slim:dist-tiny}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
out="${LEVER_DIR:-$CARGO_TARGET_DIR/levers}"
mkdir -p "$out"

for lever in $levers; do
  [ "${LEVER_BUILD:-1}" = 0 ] && break
  features="${lever%%:*}"
  profile="${lever##*:}"
  args=(--profile "$profile" --bin outpost)
  [ "$features" = slim ] && args+=(--no-default-features)
  echo "levers.sh: cargo build ${args[*]}" >&2
  bin=$(cargo build "${args[@]}" --message-format=json-render-diagnostics \
    | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
  cp "$bin" "$out/outpost-$features-$profile"
done

cargo build -q --bin outpostctl
ctl="$CARGO_TARGET_DIR/debug/outpostctl"
m=models
img=$m/data/test/0000_4.png
# The forms a device keeps on this CPU: the edge model's integer kernels where int8 dot products exist, else its
# QDQ form (engine.int8 = auto); MobileNetV2 is float.
if grep -qw -e avx512vnni -e avx_vnni -e asimddp /proc/cpuinfo; then edge_form=kernels; else edge_form=qdq; fi
"$ctl" compile --model $m/edge-int8.onnx --form $edge_form --out "$out/edge-int8.nnef.tar" 2>/dev/null
"$ctl" compile --model $m/mobilenetv2-fp32.onnx --out "$out/mobilenetv2-fp32.nnef.tar" 2>/dev/null

results="$out/results.jsonl"
: >"$results"
for r in $(seq 1 "$rounds"); do
  echo "levers.sh: round $r of $rounds" >&2
  for lever in $levers; do
    features="${lever%%:*}"
    profile="${lever##*:}"
    bin="$out/outpost-$features-$profile"
    for model in edge-int8 mobilenetv2-fp32; do
      forms="nnef"
      [ "$features" = full ] && forms="onnx nnef"
      for form in $forms; do
        if [ "$form" = onnx ]; then file=$m/$model.onnx; else file="$out/$model.nnef.tar"; fi
        "$bin" infer --bench "$seconds" --model "$file" --spec $m/$model.spec.json "$img" |
          sed "s/^{/{\"build\":\"$features $profile\",\"form\":\"$form\",\"name\":\"$model\",\"size\":$(stat -c %s "$bin"),/" >>"$results"
      done
    done
  done
done

python3 - "$results" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault((r["name"], r["build"], r["form"], r["size"]), []).append(r)
print("| model | build | form | size (stripped, x86_64) | cold load ms | load to first answer ms | p50 µs | p99 µs |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for (name, build, form, size), rs in sorted(rows.items()):
    med = lambda k: statistics.median(x[k] for x in rs)
    print(f"| {name} | {build} | {form} | {size:,} B ({size/2**20:.1f} MiB) | {med('load_ms'):.1f} | "
          f"{med('first_answer_ms'):.1f} | {med('p50_us'):,.1f} | {med('p99_us'):,.1f} |")
EOF
