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
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]} (the MQTT tests start their own broker)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The Open Inference Protocol tests drive the agent with the real tritonclient package: a cached, pinned venv.
# shellcheck source=lib/pyenv.sh
source scripts/lib/pyenv.sh
outpost_pyenv

# --features demo: the same build also runs the one-command demo as a test (tests/demo.rs).
cargo test --no-fail-fast --features demo "$@"
