#!/usr/bin/env bash
# Run the cross-built `outpost` under qemu user-mode emulation and compare its predictions with the native build's.
# The cross binary is the slim device build (cross/build.sh's default; OUTPOST_FEATURES=full for the other): it
# runs each NNEF form a bundle carries, and the native full build runs the ONNX file that form was compiled from.
#
#   cross/check.sh aarch64|armv7 [N]     N: number of test images (default: all 1500 of models/data/test)
#
# Builds (if needed) the native dev binary in ${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target} and uses the cross
# binary from cross/build.sh (run it first; OUTPOST_PROFILE selects the same profile). Labels must be identical for
# every image; confidences are compared too (reported, not enforced: the generic kernels tract uses under qemu may
# round differently from the native SIMD ones).
# For aarch64 (static glibc) it also checks that getaddrinfo("localhost") works in a static binary (cross/nss-probe.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-}"
n="${2:-}"
profile="${OUTPOST_PROFILE:-dist}"
model=models/edge-int8.onnx
features="${OUTPOST_FEATURES:-slim}"
case "$arch" in
  aarch64 | arm64) arch=aarch64; target=aarch64-unknown-linux-gnu; qemu=qemu-aarch64-static
    [ "${OUTPOST_CROSS_LIBC:-gnu}" = musl ] && target=aarch64-unknown-linux-musl ;;
  armv7 | armhf) arch=armv7; target=armv7-unknown-linux-musleabihf; qemu=qemu-arm-static ;;
  *) echo "usage: cross/check.sh aarch64|armv7 [N]" >&2; exit 2 ;;
esac
base="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
base="${base%-cross}"
cross_bin="${OUTPOST_CROSS_TARGET_DIR:-$base-cross}/$target/$profile/outpost"
[ -x "$cross_bin" ] || { echo "cross/check.sh: no $cross_bin: run cross/build.sh $arch first" >&2; exit 1; }
if ! command -v "$qemu" >/dev/null; then
  echo "cross/check.sh: running: apt-get install -y --no-install-recommends qemu-user-static" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static >&2
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mapfile -t images < <(ls models/data/test/*.png | sort)
[ -n "$n" ] && images=("${images[@]:0:$n}")
echo "=== ${#images[@]} images, model $model"

echo "=== native: cargo build --bin outpost --bin outpostctl (dev profile, $base)"
CARGO_TARGET_DIR="$base" nice -n 15 cargo build --locked --bin outpost --bin outpostctl >&2
native_bin="$base/debug/outpost"
"$base/debug/outpostctl" compile --model models/edge-fp32.onnx --out "$out/edge-fp32.nnef.tar" 2>/dev/null

echo "=== $arch under $qemu: $cross_bin"
"$qemu" "$cross_bin" --version
# Every form of a model the device can be given: the int8 model on tract's integer kernels and in its QDQ form on
# float kernels (what `auto` keeps where it times faster), and a float model. Each case: a name, the
# int8 mode, the native build's ONNX file, the cross binary's file (its NNEF form on the slim build).
if [ "$features" = slim ]; then
  cases=("int8-kernels native $model models/edge-int8.nnef.tar"
         "int8-qdq float $model models/edge-int8-qdq.nnef.tar"
         "fp32 auto models/edge-fp32.onnx $out/edge-fp32.nnef.tar")
else
  cases=("int8-kernels native $model $model" "int8-qdq float $model $model")
fi
for c in "${cases[@]}"; do
read -r form mode native_model cross_model <<<"$c"
spec="models/$(basename "$native_model" .onnx).spec.json"
t0=$(date +%s)
"$native_bin" infer --json --int8 "$mode" --model "$native_model" --spec "$spec" "${images[@]}" >"$out/native.jsonl"
t1=$(date +%s)
echo "=== $form: native $native_model: $(wc -l <"$out/native.jsonl") predictions in $((t1 - t0))s"
"$qemu" "$cross_bin" infer --json --int8 "$mode" --model "$cross_model" --spec "$spec" "${images[@]}" >"$out/cross.jsonl"
t2=$(date +%s)
echo "=== $form: $arch $(basename "$cross_model"):  $(wc -l <"$out/cross.jsonl") predictions in $((t2 - t1))s"

# Integer kernels are exact, so their labels must match everywhere. The QDQ form runs f32 products whose rounding
# differs between ISAs (FMA on x86, generic kernels under qemu), and a re-quantization can land one step apart, so a
# few labels on near-ties may differ: at most 0.2 % of the images.
max_diff=0
[ "$form" != int8-kernels ] && max_diff=$(( ${#images[@]} / 500 ))
python3 - "$out/native.jsonl" "$out/cross.jsonl" "${#images[@]}" "$arch" "$max_diff" <<'PY'
import json, sys
native_path, cross_path, expected, arch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
max_diff = int(sys.argv[5])
load = lambda p: {r["image"]: r for r in map(json.loads, open(p))}
native, cross = load(native_path), load(cross_path)
same = [k for k in native if k in cross and native[k]["label"] == cross[k]["label"]]
diff = [k for k in native if k in cross and native[k]["label"] != cross[k]["label"]]
missing = sorted(set(native) ^ set(cross))
max_dc = max((abs(native[k]["confidence"] - cross[k]["confidence"]) for k in native if k in cross), default=0.0)
# Ground truth is the digit after the underscore in the file name (NNNN_L.png).
truth = lambda k: k.rsplit("_", 1)[-1].split(".")[0]
acc = lambda d: sum(str(r["label"]) == truth(k) for k, r in d.items()) / max(len(d), 1)
print(f"images: {expected}  native: {len(native)}  {arch}: {len(cross)}")
print(f"identical labels: {len(same)}  different: {len(diff)}  missing on one side: {len(missing)}")
print(f"max |confidence difference|: {max_dc:.3g}")
print(f"accuracy vs file-name labels: native {acc(native):.4f}  {arch} {acc(cross):.4f}")
for k in diff[:10]:
    print(f"  DIFF {k}: native {native[k]['label']} {arch} {cross[k]['label']}")
for k in missing[:10]:
    print(f"  MISSING {k}")
ok = len(diff) <= max_diff and not missing and len(native) == expected
print(f"labels identical (at most {max_diff} different): " + ("yes" if ok else "NO"))
sys.exit(0 if ok else 1)
PY
done

if [ "$target" = aarch64-unknown-linux-gnu ] && [ "${OUTPOST_SKIP_NSS_PROBE:-0}" != 1 ]; then
  echo "=== static glibc name resolution (cross/nss-probe.rs, same link settings) under $qemu"
  rustc=rustc
  [ -d /usr/lib/rustlib/$target/lib ] && rustc=/usr/bin/rustc
  "$rustc" --edition 2021 -O --target "$target" -C linker=aarch64-linux-gnu-gcc -C target-feature=+crt-static \
    -o "$out/nss-probe" cross/nss-probe.rs 2>"$out/probe.log" || { cat "$out/probe.log"; exit 1; }
  grep -h "statically linked applications" "$out/probe.log" | sed 's/^/  linker: /' | head -1 || true
  "$qemu" "$out/nss-probe" localhost 127.0.0.1 ::1
fi
echo "cross/check.sh: ok"
