# Sourced by the bench scripts (after `cd` to the repo): a work dir cleaned up at exit with every process started
# into `pids`, the binaries to use, and a throwaway mosquitto.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# Sets $bin and $profile: the release binaries when built (cargo build --release --bins), else the dev ones; says
# which.
pick_binaries() {
    profile=release
    [ -x "$CARGO_TARGET_DIR/release/outpost" ] && [ -x "$CARGO_TARGET_DIR/release/outpostctl" ] || profile=debug
    bin="$CARGO_TARGET_DIR/$profile"
    echo "== binaries: $profile ($bin)" >&2
}

# A mosquitto on a free loopback port, with TCP_NODELAY; extra config lines may be given as arguments. Sets $port,
# $broker and $mosquitto_pid.
start_mosquitto() {
    command -v mosquitto >/dev/null || {
        echo "mosquitto is missing: run scripts/test.sh once (it installs mosquitto and mosquitto-clients)" >&2
        exit 1
    }
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    {
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nuser root\n' "$port"
        printf '%s\n' "$@"
    } >"$work/m.conf"
    mosquitto -c "$work/m.conf" >"$work/mosquitto.log" 2>&1 &
    mosquitto_pid=$!
    pids+=("$mosquitto_pid")
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    broker="mqtt://127.0.0.1:$port"
}
