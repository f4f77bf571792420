#!/usr/bin/env bash
# Install the Outpost agent on a systemd host (run as root on the device):
#
#   deploy/install.sh [--now] [--no-enable] BINARY
#
#   BINARY       the outpost executable for this machine, e.g. from cross/build.sh aarch64
#   --now        also start (or restart) the service
#   --no-enable  install files only
#   DESTDIR=dir  stage into dir instead of / (implies --no-enable; for packaging and tests)
#
# Installs /usr/bin/outpost, /etc/systemd/system/outpost.service, /etc/outpost/outpost.toml (kept if it already
# exists: local edits win; the shipped one is then written beside it as outpost.toml.new), then
# `systemctl daemon-reload` and `systemctl enable outpost.service`.
# State lives in /var/lib/outpost, created by systemd (StateDirectory=, DynamicUser=: owned by a transient user).
# Uninstall: systemctl disable --now outpost; rm /usr/bin/outpost /etc/systemd/system/outpost.service;
# optionally rm -r /etc/outpost /var/lib/private/outpost.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
enable=1
now=0
bin=""
for a in "$@"; do
  case "$a" in
    --now) now=1 ;;
    --no-enable) enable=0 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "install.sh: unknown option $a" >&2; exit 2 ;;
    *) bin="$a" ;;
  esac
done
[ -n "$bin" ] || { echo "usage: deploy/install.sh [--now] [--no-enable] BINARY" >&2; exit 2; }
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable" >&2; exit 1; }
dest="${DESTDIR:-}"
[ -n "$dest" ] && enable=0 && now=0
if [ -z "$dest" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (or set DESTDIR)" >&2
  exit 1
fi
if [ -z "$dest" ] && ! "$bin" --version >/dev/null 2>&1; then
  echo "install.sh: $bin does not run here (wrong architecture?)" >&2
  exit 1
fi

run() { echo "+ $*"; "$@"; }
run install -D -m 0755 "$bin" "$dest/usr/bin/outpost"
run install -D -m 0644 "$here/outpost.service" "$dest/etc/systemd/system/outpost.service"
run install -d -m 0755 "$dest/etc/outpost"
if [ -e "$dest/etc/outpost/outpost.toml" ]; then
  if ! cmp -s "$here/outpost.toml" "$dest/etc/outpost/outpost.toml"; then
    run install -m 0644 "$here/outpost.toml" "$dest/etc/outpost/outpost.toml.new"
    echo "install.sh: kept the existing /etc/outpost/outpost.toml; the shipped default is outpost.toml.new"
  fi
else
  run install -m 0644 "$here/outpost.toml" "$dest/etc/outpost/outpost.toml"
fi

if [ $enable = 1 ]; then
  if [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
    run systemctl enable outpost.service
    if [ $now = 1 ]; then
      run systemctl restart outpost.service
      run systemctl --no-pager status outpost.service || true
    else
      echo "install.sh: enabled; start with: systemctl start outpost (logs: journalctl -u outpost -f)"
    fi
  else
    echo "install.sh: systemd is not running here; enable later with: systemctl enable --now outpost" >&2
  fi
fi
echo "install.sh: done"
