#!/usr/bin/env bash
# Forwarding latency benchmark (issue 6): a hard case's round trip edge -> mosquitto -> cloud worker -> edge on
# loopback, beside the same requests answered by the edge alone, in one run.
#
#   scripts/bench-forward.sh            # 300 requests each, one client
#   N=1000 scripts/bench-forward.sh
#
# Both agents run with the result cache off, so every request runs a model. The forwarding agent treats every input as
# hard (--hardness max-prob:1.01), so each request waits for the cloud's answer. Release binaries when built
# (cargo build --release --bins), else the dev ones; says which. Needs mosquitto (scripts/test.sh installs it).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
n="${N:-300}"
# shellcheck source=scripts/lib/bench.sh
source "$repo/scripts/lib/bench.sh"
pick_binaries
start_mosquitto
"$bin/outpostctl" keygen --out "$work/cloud.key" >"$work/cloud-keys"
"$bin/outpostctl" cloud --broker "mqtt://127.0.0.1:$port" --model models/cloud-fp32.onnx --dataset "$work/ds" \
    --key "$work/cloud.key" 2>/dev/null &
pids+=($!)
printf '[cache]\nenabled = false\n' >"$work/agent.toml"
start_agent() { # name, extra flags... (no command substitution: the agent must stay a child of this shell)
    local name="$1"; shift
    "$bin/outpost" run --config "$work/agent.toml" --listen 127.0.0.1:0 --state-dir "$work/$name" "$@" 2>/dev/null &
    pids+=($!)
    for _ in $(seq 200); do [ -f "$work/$name/api.addr" ] && break; sleep 0.05; done
}
start_agent edge
start_agent fwd --broker "mqtt://127.0.0.1:$port" --device-id bench --hardness max-prob:1.01 --cloud-deadline-ms 5000 \
    --cloud-keys "$work/cloud-keys"
edge="$(cat "$work/edge/api.addr")"
fwd="$(cat "$work/fwd/api.addr")"
sleep 1

python3 - "$edge" "$fwd" "$n" "$profile" <<'EOF'
import glob, json, sys, time, urllib.request
edge, fwd, n, profile = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
images = [open(p, "rb").read() for p in sorted(glob.glob("models/data/test/*.png"))]
def run(addr):
    lat, sources = [], {}
    for i in range(n):
        req = urllib.request.Request(f"http://{addr}/v1/infer", data=images[i % len(images)], headers={"content-type": "image/png"})
        t = time.perf_counter()
        with urllib.request.urlopen(req) as r:
            body = json.load(r)
        lat.append((time.perf_counter() - t) * 1e3)
        sources[body["source"]] = sources.get(body["source"], 0) + 1
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    return pick(0.5), pick(0.99), sources
e = run(edge)
f = run(fwd)
print(f"{n} requests each, one client, cache off, binaries: {profile}")
print()
print("| path | p50 ms | p99 ms | answered by |")
print("|---|---|---|---|")
print(f"| edge only (edge-int8 in the agent) | {e[0]:.2f} | {e[1]:.2f} | {e[2]} |")
print(f"| forwarded: agent -> mosquitto -> cloud worker (cloud-fp32) -> agent | {f[0]:.2f} | {f[1]:.2f} | {f[2]} |")
print()
print(f"added by the round trip through the broker and the cloud model: p50 {f[0]-e[0]:+.2f} ms, p99 {f[1]-e[1]:+.2f} ms")
EOF
