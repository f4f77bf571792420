#!/usr/bin/env bash
# Static checks of deploy/outpost.service (no running systemd needed):
#   1. `systemd-analyze verify` must print nothing (warnings count as failures);
#   2. `systemd-analyze security --offline=true` exposure must be <= ${OUTPOST_MAX_EXPOSURE:-0.9} (the unit's level
#      since issue 25: a change may not weaken it);
#   3. the unit orders the agent after time-sync.target and does not pull in a unit that can wait forever for it.
# verify checks that ExecStart's binary exists, so it runs on a temporary copy of the unit whose ExecStart points at
# an existing binary: $OUTPOST_BIN if set (e.g. a cross build), else /usr/bin/outpost if installed, else a stub.
# Needs systemd >= 250 (--offline); installs the `systemd` package with apt-get when systemd-analyze is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
unit=deploy/outpost.service
max="${OUTPOST_MAX_EXPOSURE:-0.9}"

if ! command -v systemd-analyze >/dev/null; then
  echo "deploy/check.sh: running: apt-get install -y --no-install-recommends systemd" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >&2
fi

echo "=== time sync ordering"
grep -Eq '^After=.*\btime-sync\.target\b' "$unit" || { echo "deploy/check.sh: the unit must order the agent After=time-sync.target" >&2; exit 1; }
if grep -Eq '^(Wants|Requires|BindsTo)=.*(time-sync\.target|time-wait-sync|chrony-wait)' "$unit"; then
  echo "deploy/check.sh: the unit must not pull in a time-sync wait (it can wait forever without a network)" >&2
  exit 1
fi
echo "after time-sync.target, nothing pulled in"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin="${OUTPOST_BIN:-}"
if [ -z "$bin" ]; then
  if [ -x /usr/bin/outpost ]; then
    bin=/usr/bin/outpost
  else
    bin="$tmp/outpost"
    printf '#!/bin/sh\nexit 0\n' >"$bin"
    chmod +x "$bin"
  fi
fi
sed "s|^ExecStart=/usr/bin/outpost |ExecStart=$bin |" "$unit" >"$tmp/outpost.service"
grep -q "^ExecStart=$bin " "$tmp/outpost.service" || { echo "deploy/check.sh: ExecStart not rewritten" >&2; exit 1; }

echo "=== systemd-analyze verify $unit (ExecStart -> $bin)"
# --man=no: the Documentation= man page need not be installed on the build host.
out=$(cd "$tmp" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$tmp/outpost.service" 2>&1) || {
  echo "$out"
  echo "deploy/check.sh: verify failed" >&2
  exit 1
}
if [ -n "$out" ]; then
  echo "$out"
  echo "deploy/check.sh: verify printed warnings (above)" >&2
  exit 1
fi
echo "clean"

echo "=== systemd-analyze security --offline=true $unit"
report=$(systemd-analyze security --offline=true --no-pager "$tmp/outpost.service" 2>&1) || true
# Show what still costs exposure (lines with a non-zero weight), then the score.
echo "$report" | grep -E '^✗|^\s*✗' || true
score=$(echo "$report" | sed -nE 's/.*Overall exposure level for [^:]*: ([0-9]+\.[0-9]+).*/\1/p' | tail -1)
[ -n "$score" ] || { echo "$report"; echo "deploy/check.sh: no exposure score in the output above" >&2; exit 1; }
echo "exposure: $score (max $max)"
if awk -v s="$score" -v m="$max" 'BEGIN { exit !(s > m) }'; then
  echo "deploy/check.sh: exposure $score > $max" >&2
  exit 1
fi
echo "deploy/check.sh: ok"
