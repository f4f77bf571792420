# Sourced by the bench scripts: a throwaway mosquitto on a free loopback port, with TCP_NODELAY.
# Needs $work (a temp dir) and the array `pids` (the caller's cleanup kills them). Extra config lines may be given
# as arguments. Sets $port, $broker and $mosquitto_pid.
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
