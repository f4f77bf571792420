#!/usr/bin/env bash
# Cross-build a STATIC `outpost` binary for ARM, without Docker.
#
#   cross/build.sh aarch64|armv7
#
#   aarch64 -> aarch64-unknown-linux-gnu, glibc linked statically (+crt-static)   [default]
#              (OUTPOST_CROSS_LIBC=musl: aarch64-unknown-linux-musl through cargo-zigbuild instead)
#   armv7   -> armv7-unknown-linux-musleabihf (hard-float), musl, through cargo-zigbuild + zig
#
# Toolchain, in this order:
#   1. rustup with the target std already installed (or installable: `rustup target add` is tried once);
#   2. otherwise Debian's rustc-web/cargo-web (/usr/bin/rustc, 1.96 in bookworm-security), with
#      libstd-rust-web-dev:arm64 for aarch64-gnu, or rust-web-src + -Zbuild-std for musl targets.
# Missing pieces are installed with apt-get (Debian/Ubuntu, as root) and pip (a venv under ~/.cache); every
# install is printed first. Set OUTPOST_CROSS_NO_INSTALL=1 to only report what is missing.
#
# Environment:
#   OUTPOST_PROFILE   cargo profile: dist (default: the shipping profile, fat LTO, stripped; what CI builds and
#                     checks) or release (no LTO, faster to build), or one of the lever profiles in Cargo.toml
#   OUTPOST_FEATURES  slim (default: the device build, no ONNX front end, loads NNEF) or full (reads ONNX too)
#   CARGO_TARGET_DIR  base target dir; this script uses "${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}-cross"
#                     (cargo locks it: two cross builds at once need OUTPOST_CROSS_TARGET_DIR, which overrides it)
#   OUTPOST_CROSS_TOOLCHAIN  auto (default) | rustup | debian
#   OUTPOST_CROSS_UNIT_TESTS=1  also build the library's unit tests for the target and run them through
#                     qemu-user (cargo's target runner), after the binary
#
# Output: the binary path, `file` output (must say statically linked) and its stripped size. The binary itself is
# stripped (profile strip=symbols), so it is ready to ship; the last line of stdout is the path.
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-}"
profile="${OUTPOST_PROFILE:-dist}"
features="${OUTPOST_FEATURES:-slim}"
toolchain_pref="${OUTPOST_CROSS_TOOLCHAIN:-auto}"
libc="${OUTPOST_CROSS_LIBC:-}"
base_target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/outpost-target}"
export CARGO_TARGET_DIR="${OUTPOST_CROSS_TARGET_DIR:-${base_target_dir%-cross}-cross}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
venv="${OUTPOST_CROSS_VENV:-$HOME/.cache/outpost-cross-venv}"

say() { echo "cross/build.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

case "$arch" in
  aarch64 | arm64) arch=aarch64; libc="${libc:-gnu}" ;;
  armv7 | armhf) arch=armv7; libc=musl ;;
  *) die "usage: cross/build.sh aarch64|armv7" ;;
esac
case "$arch/$libc" in
  aarch64/gnu) target=aarch64-unknown-linux-gnu ;;
  aarch64/musl) target=aarch64-unknown-linux-musl ;;
  armv7/musl) target=armv7-unknown-linux-musleabihf ;;
  *) die "unsupported combination $arch/$libc" ;;
esac
triple_env=$(echo "$target" | tr 'a-z-' 'A-Z_')

# --- installing helpers ----------------------------------------------------------------------------------------
apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "${OUTPOST_CROSS_NO_INSTALL:-0}" = 1 ] || ! command -v apt-get >/dev/null; then
    die "missing packages: ${missing[*]} (install them, or unset OUTPOST_CROSS_NO_INSTALL on Debian/Ubuntu)"
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ $apt_updated = 0 ]; then
    say "running: $sudo apt-get update"
    $sudo apt-get update -qq
    apt_updated=1
  fi
  say "running: $sudo apt-get install -y --no-install-recommends ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

have_rustup_target() {
  command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$1"
}

debian_rust_ok() {
  # Debian's rustc-web must be there and newer than the crate's rust-version (1.85).
  [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || return 1
  local minor
  minor=$(/usr/bin/rustc -V | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
  [ "$minor" -ge 85 ]
}

zig_tools() {
  # cargo-zigbuild and zig, from PyPI, in a venv (no network besides PyPI needed).
  if ! command -v cargo-zigbuild >/dev/null || ! { command -v zig >/dev/null || [ -x "$venv/bin/python" ]; }; then
    if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
      [ "${OUTPOST_CROSS_NO_INSTALL:-0}" = 1 ] && die "cargo-zigbuild/zig missing (pip install ziglang cargo-zigbuild)"
      python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
      say "running: python3 -m venv $venv && $venv/bin/pip install ziglang cargo-zigbuild"
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q ziglang cargo-zigbuild >&2
    fi
    local zigdir
    zigdir=$("$venv/bin/python" -c 'import ziglang, os; print(os.path.dirname(ziglang.__file__))')
    export PATH="$venv/bin:$zigdir:$PATH"
  fi
  command -v zig >/dev/null || die "zig not on PATH"
}

# --- choose the toolchain --------------------------------------------------------------------------------------
toolchain=""
if [ "$toolchain_pref" = rustup ] || { [ "$toolchain_pref" = auto ] && have_rustup_target "$target"; }; then
  have_rustup_target "$target" || {
    say "running: rustup target add $target"
    timeout 120 rustup target add "$target" >&2 || die "rustup target add $target failed (offline?); try OUTPOST_CROSS_TOOLCHAIN=debian"
  }
  toolchain=rustup
elif [ "$toolchain_pref" = debian ]; then
  toolchain=debian
else
  # auto: an installed Debian toolchain for this target wins over trying a download.
  if [ "$libc" = gnu ] && debian_rust_ok && [ -d /usr/lib/rustlib/$target/lib ]; then
    toolchain=debian
  elif [ "$libc" = musl ] && debian_rust_ok && [ -d /usr/lib/rustlib/src/rust/library ]; then
    toolchain=debian
  elif command -v rustup >/dev/null && { say "trying: rustup target add $target"; timeout 120 rustup target add "$target" >&2; }; then
    toolchain=rustup
  else
    say "rustup cannot add $target here; using Debian's rustc-web"
    toolchain=debian
  fi
fi

if [ $toolchain = debian ]; then
  pkgs=(rustc-web cargo-web)
  if [ "$libc" = gnu ]; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
      say "running: dpkg --add-architecture arm64"
      [ "$(id -u)" = 0 ] && dpkg --add-architecture arm64 || sudo dpkg --add-architecture arm64
      apt_updated=0
    fi
    pkgs+=(libstd-rust-web-dev:arm64)
  else
    pkgs+=(rust-web-src)
  fi
  apt_install "${pkgs[@]}"
  # The target std must match the compiler exactly (apt can fall back to bookworm's 1.85 std if an index fails).
  if [ "$libc" = gnu ]; then
    host_v=$(dpkg-query -W -f='${Version}' rustc-web)
    std_v=$(dpkg-query -W -f='${Version}' libstd-rust-web-dev:arm64)
    [ "$host_v" = "$std_v" ] || die "rustc-web $host_v but libstd-rust-web-dev:arm64 $std_v: run apt-get update and reinstall"
  fi
  # rustup's proxies usually come first on PATH: put Debian's compiler first.
  export PATH="/usr/bin:$PATH"
  export RUSTC=/usr/bin/rustc
  unset RUSTUP_TOOLCHAIN
  cargo=/usr/bin/cargo
else
  cargo=cargo
fi

# --- configure the build ---------------------------------------------------------------------------------------
build=("$cargo" build)
case "$features" in
  slim) feature_args=(--no-default-features) ;;
  full) feature_args=() ;;
  *) die "OUTPOST_FEATURES must be slim or full, not '$features'" ;;
esac
flags=""
if [ "$libc" = gnu ]; then
  if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  fi
  export "CARGO_TARGET_${triple_env}_LINKER=aarch64-linux-gnu-gcc"
  export "CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc"
  export "AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar"
  flags="-C target-feature=+crt-static"
else
  zig_tools
  build=(cargo-zigbuild build)
  # zig provides crt1.o & co for musl; rustc's self-contained copies are not in Debian's build-std setup.
  flags="-C link-self-contained=no"
  if [ $toolchain = debian ]; then
    export RUSTC_BOOTSTRAP=1
    build+=(-Zbuild-std=std,panic_unwind)
  fi
  flags="$flags -C target-feature=+crt-static"
fi
export "CARGO_TARGET_${triple_env}_RUSTFLAGS=$flags ${OUTPOST_CROSS_RUSTFLAGS:-}"
# The shipped binary is stripped; crates are identical otherwise, so this only changes the final link.
export "CARGO_PROFILE_$(echo "$profile" | tr 'a-z-' 'A-Z_')_STRIP=symbols"

say "target $target, toolchain $toolchain ($(${RUSTC:-rustc} -V)), profile $profile, $features build"
say "target dir $CARGO_TARGET_DIR"
say "running: ${build[*]} --locked --profile $profile ${feature_args[*]} --target $target --bin outpost  (RUSTFLAGS for target: $flags)"
start=$(date +%s)
nice -n "${OUTPOST_NICE:-15}" "${build[@]}" --locked --profile "$profile" "${feature_args[@]}" --target "$target" --bin outpost >&2
say "build took $(( $(date +%s) - start ))s"

if [ "${OUTPOST_CROSS_UNIT_TESTS:-0}" = 1 ]; then
  qemu="qemu-$(echo "$target" | cut -d- -f1 | sed 's/armv7/arm/')-static"
  command -v "$qemu" >/dev/null || apt_install qemu-user-static
  export "CARGO_TARGET_${triple_env}_RUNNER=$qemu"
  say "running: ${build[0]} test --lib (runner $qemu)"
  start=$(date +%s)
  test_cmd=("${build[@]}")
  test_cmd[1]=test
  nice -n "${OUTPOST_NICE:-15}" "${test_cmd[@]}" --locked --profile "$profile" "${feature_args[@]}" --target "$target" --lib >&2
  say "unit tests under $qemu took $(( $(date +%s) - start ))s"
fi

command -v file >/dev/null || apt_install file
bin="$CARGO_TARGET_DIR/$target/$profile/outpost"
[ -x "$bin" ] || die "no binary at $bin"
info=$(file -b "$bin")
echo "binary:   $bin"
echo "file:     $info"
echo "size:     $(stat -c %s "$bin") bytes ($(( $(stat -c %s "$bin") / 1024 / 1024 )) MiB, stripped)"
case "$info" in
  *"statically linked"* | *"static-pie linked"*) ;;
  *) die "not a static binary: $info" ;;
esac
case "$info" in
  *"not stripped"*) die "binary is not stripped" ;;
esac
echo "$bin"
