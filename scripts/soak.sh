#!/usr/bin/env bash
# Soak under faults (issue 14): tests/it/soak.rs for DURATION seconds on release binaries. An agent with a real
# mosquitto, a cloud worker and steady HTTP traffic while the broker is SIGKILLed and restarted, the agent's link is
# cut, the agent is SIGKILLed and restarted, and signed updates are pushed and rolled back; then it checks that no
# request and no hard case was lost or stored twice, the outbox drained, the slot record is consistent, and RSS
# stayed flat.
#
#   scripts/soak.sh 1800              # the 30-minute run of the issue (default: 1800)
#   SOAK_SEED=42 scripts/soak.sh 600  # replay a schedule (the seed is printed at the start and in the figures)
#
# The figures (also printed at the end) go to $CARGO_TARGET_DIR/soak/soak-<date>-<seconds>s.txt, the RSS samples
# beside them (.rss.csv). Needs mosquitto (scripts/test.sh installs it). `cargo test` runs the same test for 120 s.
set -euo pipefail
cd "$(dirname "$0")/.."

# The same target dir as scripts/test.sh: builds outside the clone, reused between runs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"

seconds="${1:-1800}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [DURATION_SECONDS]" >&2; exit 2 ;;
esac
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || {
    echo "soak.sh: mosquitto is missing: run scripts/test.sh once (it installs mosquitto and mosquitto-clients)" >&2
    exit 1
}

mkdir -p "$CARGO_TARGET_DIR/soak"
export SOAK_FIGURES="$CARGO_TARGET_DIR/soak/soak-$(date +%Y%m%d-%H%M%S)-${seconds}s.txt"
status=0
SOAK_SECONDS="$seconds" cargo test --release --features demo --test it soak:: -- --nocapture || status=$?
if [ -f "$SOAK_FIGURES" ]; then
    echo "soak.sh: figures in $SOAK_FIGURES, RSS samples in ${SOAK_FIGURES%.txt}.rss.csv"
fi
exit "$status"
