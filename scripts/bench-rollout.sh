#!/usr/bin/env bash
# Fleet-scale rollout benchmark: AGENTS simulated agents (default 1000, each its own MQTT session, state dir and
# slots) through one mosquitto on this machine. Measures the time of a full 4-wave rollout of a good bundle, broker
# publish messages per second during it, peak RSS per agent and of the broker, then the same rollout of a bad bundle
# (edge-flat: passes its golden gate, live confidence collapses) halting in the canary wave.
#
#   scripts/bench-rollout.sh            # 1000 agents
#   AGENTS=200 RATE=600 scripts/bench-rollout.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
AGENTS=${AGENTS:-1000}
RATE=${RATE:-1000}
PROBATION=${PROBATION:-30}
# shellcheck source=scripts/lib/bench.sh
source "$repo/scripts/lib/bench.sh"
cargo build --release --quiet --bin outpostctl
CTL=$CARGO_TARGET_DIR/release/outpostctl
ulimit -n "$(ulimit -Hn)"

W=$work
start_mosquitto "persistence false" "sys_interval 1" "max_queued_messages 100000"
PORT=$port
URL=$broker
MOSQ=$mosquitto_pid

"$CTL" keygen --out "$W/op.key" >"$W/trusted" 2>/dev/null
"$CTL" bundle --model models/edge-fp32.onnx --spec models/edge-fp32.spec.json --name edge-int8 --version 2 \
  --golden-images models/data/calib --key "$W/op.key" --out "$W/good.bundle" >/dev/null
"$CTL" bundle --model models/edge-flat.onnx --spec models/edge-flat.spec.json --name edge-int8 --version 3 \
  --golden-images models/data/calib --key "$W/op.key" --out "$W/bad.bundle" >/dev/null

sys() { mosquitto_sub -p "$PORT" -t "\$SYS/broker/publish/messages/$1" -C 1 -W 5; }
online() {
  mosquitto_sub -p "$PORT" -t 'outpost/v1/device/+/status' -C "$AGENTS" -W 5 2>/dev/null | grep -c '"state":"online"' || true
}

T0=$(date +%s.%N)
"$CTL" simulate --broker "$URL" --agents "$AGENTS" --dir "$W/sim" --trusted-keys "$W/trusted" --rate "$RATE" \
  --probation-requests "$PROBATION" --heartbeat-s 5 >"$W/sim.out" 2>"$W/sim.err" &
SIM=$!
pids+=("$SIM")
until grep -q ready "$W/sim.out" 2>/dev/null; do sleep 0.2; kill -0 $SIM || { cat "$W/sim.err"; exit 1; }; done
until [ "$(online)" -ge "$AGENTS" ]; do sleep 1; done
T1=$(date +%s.%N)
echo "$AGENTS agents online in $(echo "$T1 - $T0" | bc) s" >&2

rollout() { # name bundle [extra args]; the driver's lines go to $W/<name>.log
  local name=$1 bundle=$2
  shift 2
  "$CTL" rollout start --broker "$URL" --key "$W/op.key" --state "$W/$name" --group sim --waves 1,10,50,100 \
    --shadow-s 3 --observe-s 3 --min-shadow-runs 3 --shadow-fraction 1 "$@" "$bundle" 2>"$W/$name.log"
}

R0=$(sys received); S0=$(sys sent); G0=$(date +%s.%N)
rollout good "$W/good.bundle" || { cat "$W/good.log"; exit 1; }
G1=$(date +%s.%N); R1=$(sys received); S1=$(sys sent)
B0=$(date +%s.%N)
BAD_RC=0
# BAD_GATES="--max-confidence-drop 1" turns the shadow confidence gate off: the canaries then put the bad model
# live and their own probation rolls it back.
# shellcheck disable=SC2086
rollout bad "$W/bad.bundle" ${BAD_GATES:-} || BAD_RC=$?
B1=$(date +%s.%N)
sleep 3
kill -TERM $SIM; wait $SIM || true
MOSQ_RSS=$(awk '/VmHWM/{print $2}' /proc/$MOSQ/status)

python3 - "$W" "$AGENTS" "$G0" "$G1" "$R0" "$R1" "$S0" "$S1" "$B0" "$B1" "$BAD_RC" "$MOSQ_RSS" "$RATE" <<'EOF'
import json, re, sys
w, n, g0, g1, r0, r1, s0, s1, b0, b1, rc, mosq, rate = sys.argv[1:]
n = int(n)
good = json.load(open(f"{w}/good/rollout.json"))
bad = json.load(open(f"{w}/bad/rollout.json"))
waves = [h for _, h in good["history"]]
per_wave = [0] * len(good["plan"]["waves"])
for s in good["sent"].values():
    per_wave[s["wave"]] += 1
dur = float(g1) - float(g0)
msgs = (int(r1) - int(r0)) + (int(s1) - int(s0))
last = open(f"{w}/sim.err").read().strip().splitlines()[-1]
m = re.search(r"peak RSS (\d+) MiB, (\d+) KiB per agent", last)
print(f"agents                         {n} (traffic {rate} requests/s over the fleet)")
print(f"good rollout (4 waves)         {dur:.1f} s, phase {good['phase']}, devices per wave {per_wave}, failed {len(good['failed'])}")
print(f"broker publishes during it     {msgs} ({msgs / dur:.0f} msg/s, received+sent)")
reason = bad['phase'].get('Halted', '') if isinstance(bad['phase'], dict) else ''
print(f"bad rollout                    exit {rc}, {float(b1) - float(b0):.1f} s to halt in wave {bad['wave'] + 1}: {reason}")
print(f"  went live on                 {sum(1 for s in bad['sent'].values() if s.get('activate'))} devices")
print(f"  reached                      {len(bad['sent'])} devices (canaries), {len(bad['failed'])} rolled it back; {n - len(bad['sent'])} never got it")
if m:
    print(f"simulator peak RSS             {m.group(1)} MiB, {m.group(2)} KiB per agent")
print(f"mosquitto peak RSS             {int(mosq) // 1024} MiB")
print(last)
EOF
