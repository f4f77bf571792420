# shellcheck shell=bash
# Sourced, not run: a cached Python venv for the tests that drive the agent with real Python clients (the Open
# Inference Protocol tests use the real `tritonclient` HTTP client).
#
#   source scripts/lib/pyenv.sh
#   outpost_pyenv            # creates or refreshes the venv when needed; exports OUTPOST_PYTHON
#   "$OUTPOST_PYTHON" -c 'import tritonclient.http'
#
# Where: ${OUTPOST_VENV:-$HOME/.cache/outpost-test-venv}, outside the clone so that runs reuse it. What:
# scripts/requirements-test.txt (fully pinned), from the package registry with pip. When: the venv is (re)built only
# if its stamp -- the SHA-256 of the requirements file and the base Python's version -- differs, so a current venv
# costs one file read. The stamp is written last: an interrupted build is redone next time. Base interpreter:
# ${OUTPOST_PYENV_BASE:-python3}. Prints one line either way; returns non-zero (with pip's error) on failure.

outpost_pyenv() {
  local root req venv base stamp want have
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  req="$root/scripts/requirements-test.txt"
  venv="${OUTPOST_VENV:-$HOME/.cache/outpost-test-venv}"
  base="${OUTPOST_PYENV_BASE:-python3}"
  stamp="$venv/.outpost-stamp"

  if ! command -v "$base" >/dev/null 2>&1; then
    echo "pyenv: no '$base' on PATH: the Python client tests need Python 3 (set OUTPOST_PYENV_BASE)" >&2
    return 1
  fi
  want="$(sha256sum "$req" | cut -d' ' -f1) $("$base" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" \
    || return 1
  have="$(cat "$stamp" 2>/dev/null || true)"
  if [ "$have" = "$want" ] && [ -x "$venv/bin/python" ]; then
    echo "pyenv: test venv $venv is current (scripts/requirements-test.txt unchanged)"
    export OUTPOST_PYTHON="$venv/bin/python"
    return 0
  fi

  # Debian's own python3 keeps venv/ensurepip in a separate package; install it as test.sh installs mosquitto.
  if ! "$base" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      local sudo=""
      [ "$(id -u)" -eq 0 ] || sudo="sudo"
      echo "pyenv: installing python3-venv (the test venv needs it)"
      $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends python3-venv >/dev/null || return 1
    else
      echo "pyenv: '$base' has no venv/ensurepip module" >&2
      return 1
    fi
  fi

  # Never delete something that is not a venv (OUTPOST_VENV pointing at the wrong folder).
  if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
    echo "pyenv: $venv exists and is not a venv; not touching it (set OUTPOST_VENV)" >&2
    return 1
  fi
  # Two runs at once: one builds, the other waits and then finds the venv current.
  mkdir -p "$(dirname "$venv")"
  local lock_fd
  if command -v flock >/dev/null 2>&1; then
    exec {lock_fd}>"$venv.lock"
    flock "$lock_fd"
    if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ] && [ -x "$venv/bin/python" ]; then
      exec {lock_fd}>&-
      echo "pyenv: test venv $venv is current (built by a concurrent run)"
      export OUTPOST_PYTHON="$venv/bin/python"
      return 0
    fi
  fi
  _outpost_pyenv_build "$base" "$venv" "$req" "$stamp" "$want" "$have"
  local rc=$?
  [ -z "${lock_fd:-}" ] || exec {lock_fd}>&-
  [ "$rc" -eq 0 ] && export OUTPOST_PYTHON="$venv/bin/python"
  return "$rc"
}

_outpost_pyenv_build() {
  local base="$1" venv="$2" req="$3" stamp="$4" want="$5" have="$6"
  if [ -z "$have" ]; then
    echo "pyenv: creating the test venv $venv from scripts/requirements-test.txt (tritonclient[http], numpy; pip, about 30 s)"
  else
    echo "pyenv: rebuilding the test venv $venv (scripts/requirements-test.txt or Python changed; pip, about 30 s)"
  fi
  rm -rf "$venv"
  "$base" -m venv "$venv" || return 1
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --prefer-binary -r "$req" \
    || { echo "pyenv: pip install -r $req failed" >&2; return 1; }
  "$venv/bin/python" -c 'import tritonclient.http, numpy' \
    || { echo "pyenv: the new venv cannot import tritonclient.http" >&2; return 1; }
  printf '%s\n' "$want" >"$stamp"
}
