#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing, then runs the whole suite.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds go outside the clone so that repeated runs (CI on one machine) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"

need_apt=()
{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } && command -v mosquitto_sub >/dev/null 2>&1 \
  || need_apt+=(mosquitto mosquitto-clients)
# tests/it/clock.rs runs the real binary under a faked clock: libfaketime, LD_PRELOADed (Debian's faketime package).
compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || need_apt+=(faketime)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]} (the MQTT tests start their own broker; tests/it/clock.rs fakes the clock)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The Open Inference Protocol tests drive the agent with the real tritonclient package: a cached, pinned venv.
# shellcheck source=lib/pyenv.sh
source scripts/lib/pyenv.sh
outpost_pyenv

# The slim device build (no ONNX front end) for tests/it/slim.rs, in the same target dir (its artifacts live beside the
# full build's; the first time builds the dependencies again, ~5 min, as their features differ). Copied aside: the
# full build below replaces target/debug/outpost.
echo "test.sh: building the slim device binary (cargo build --no-default-features --bin outpost)"
slim=$(cargo build --no-default-features --bin outpost --message-format=json-render-diagnostics \
  | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
[ -x "$slim" ] || { echo "test.sh: the slim build gave no binary" >&2; exit 1; }
export OUTPOST_SLIM_BIN="$CARGO_TARGET_DIR/outpost-slim"
cp "$slim" "$OUTPOST_SLIM_BIN"
echo "test.sh: the library's unit tests in the slim build (cargo test --no-default-features --lib)"
cargo test --no-default-features --lib -q

# The release build of the device binary: tests/it/clock.rs runs it under libfaketime, so a wrong clock is tested on the
# binary as built for use, with no test hook (a cold build ~12 min; warm, a relink). Copied aside like the slim one.
echo "test.sh: building the release binary (cargo build --release --bin outpost) for tests/it/clock.rs"
release=$(cargo build --release --bin outpost --message-format=json-render-diagnostics \
  | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
[ -x "$release" ] || { echo "test.sh: the release build gave no binary" >&2; exit 1; }
export OUTPOST_RELEASE_BIN="$CARGO_TARGET_DIR/outpost-release"
cp "$release" "$OUTPOST_RELEASE_BIN"

# --features demo: the same build also runs the one-command demo as a test (tests/it/demo.rs).
cargo test --no-fail-fast --features demo "$@"
