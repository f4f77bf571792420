#!/usr/bin/env bash
# Update transfer benchmark (issue 5): a big signed bundle through mosquitto on loopback.
#
#   scripts/bench-transfer.sh            # chunk size 64 KiB
#   CHUNK=262144 scripts/bench-transfer.sh
#
# Prints, from one run on one broker:
#   - mosquitto_pub -> mosquitto_sub moving the same bundle bytes as one QoS 1 message (the C clients' reference);
#   - the agent's chunked fetch (request, receive, check the signed digest, write, fsync, record progress): MB/s;
#   - the time from `outpostctl publish` to the acknowledgement (fetched and installed) and to the new model serving.
# Needs mosquitto and mosquitto-clients (scripts/test.sh installs them). Uses release binaries when built
# (cargo build --release --bins), else the dev ones; says which.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
chunk="${CHUNK:-65536}"
window="${WINDOW:-8}"
# shellcheck source=scripts/lib/bench.sh
source "$repo/scripts/lib/bench.sh"
pick_binaries
start_mosquitto

"$bin/outpostctl" keygen --out "$work/k" >"$work/trusted" 2>/dev/null
echo "== bundling MobileNetV2 fp32 with golden vectors" >&2
"$bin/outpostctl" bundle --model models/mobilenetv2-fp32.onnx --spec models/mobilenetv2-fp32.spec.json \
    --version 2 --key "$work/k" --golden-images models/data/calib --out "$work/b.bundle" >&2
size=$(stat -c %s "$work/b.bundle")

now() { date +%s.%N; }

echo "== mosquitto_pub -> mosquitto_sub, one message of $size bytes, QoS 1" >&2
ref=()
for run in 1 2 3; do
    mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -t bench/raw -C 1 >"$work/raw.out" &
    sub=$!
    sleep 0.3
    t0=$(now)
    mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -t bench/raw -f "$work/b.bundle"
    wait "$sub"
    t1=$(now)
    ref+=("$(python3 -c "print(f'{$size/($t1-$t0)/1e6:.1f}')")")
done

echo "== agent fetch + install, chunks of $chunk bytes, $window in flight" >&2
printf '[fleet]\nwindow = %s\n' "$window" >"$work/agent.toml"
"$bin/outpost" run --config "$work/agent.toml" --listen 127.0.0.1:0 --state-dir "$work/state" --broker "$broker" --device-id bench \
    --trusted-keys "$work/trusted" 2>"$work/agent.log" &
pids+=($!)
for _ in $(seq 200); do [ -f "$work/state/api.addr" ] && break; sleep 0.05; done
api="http://$(cat "$work/state/api.addr")"
sleep 1
t0=$(now)
"$bin/outpostctl" publish --device bench --key "$work/k" --json --chunk-size "$chunk" --wait 600 \
    --broker "$broker" "$work/b.bundle" >"$work/ack.json"
t1=$(now)
want="$(python3 -c "import json; print(json.load(open('$work/ack.json'))['result']['installed']['digest'])")"
while ! curl -s "$api/v1/status" | grep -q "$want"; do sleep 0.01; done
t2=$(now)

python3 - "$work/ack.json" "$size" "$t0" "$t1" "$t2" "$chunk" "$profile" "$window" "${ref[@]}" <<'EOF'
import json, sys
ack = json.load(open(sys.argv[1]))
size, t0, t1, t2, chunk, profile = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
ref = [float(x) for x in sys.argv[9:]]
t = ack["result"]["transfer"]
fetch_s = t["elapsed_ms"] / 1000
print(f"bundle: {size} bytes ({size/2**20:.1f} MiB), {t['chunks_total']} chunks of {chunk} bytes, window {sys.argv[8]}; binaries: {profile}")
print()
print("| path | MB/s | notes |")
print("|---|---|---|")
print(f"| mosquitto_pub -> mosquitto_sub (one QoS 1 message, 3 runs) | {', '.join(f'{r:.1f}' for r in ref)} | process start included |")
print(f"| agent fetch (request, check digest, write, fsync, record) | {size/fetch_s/1e6:.1f} | {fetch_s:.2f} s, retries {t['retries']}, duplicates {t['duplicates']} |")
print()
print(f"publish -> acknowledged (fetched, gated, installed): {t1-t0:.2f} s")
print(f"publish -> new model serving: {t2-t0:.2f} s")
EOF
