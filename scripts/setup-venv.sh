#!/usr/bin/env bash
# Builds the action's virtualenv once per (lock file, Python) and reuses it.
# Matrix jobs on one self-hosted machine share the tool cache, so the build
# happens under an exclusive lock and is marked complete only when it is.
#
# Usage: setup-venv.sh [MODE]. MODE is the action's `mode` input: lightweight installs
# requirements-lightweight.txt (no Docker client); anything else, or none (the config file
# may still choose docker), installs the whole requirements.txt.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
uv_lock="$root/scripts/uv-requirements.txt"
mode="${1:-}"
if [[ "${mode,,}" =~ ^[[:space:]]*lightweight[[:space:]]*$ ]]; then
  set_name=lightweight lock="$root/requirements-lightweight.txt"
else
  set_name=full lock="$root/requirements.txt"
fi
base_python="${BASTION_MIGRATE_BASE_PYTHON:-python3}"
started_ns=$(date +%s%N)

fail() {
  echo "::error title=bastion-migrate: setup failed::$1"
  exit 1
}

setup_python="add actions/setup-python (python-version: '3.12') before this step, or set BASTION_MIGRATE_BASE_PYTHON to a Python 3.11+ interpreter"
command -v "$base_python" >/dev/null || fail "no '$base_python' on PATH: bastion-migrate needs Python 3.11 or newer on the runner; $setup_python."
# One interpreter start (they cost tens of ms each): its version check, path and full version.
py_info="$("$base_python" -c 'import sys; print(int(sys.version_info >= (3, 11)), sys.executable, sys.version.split()[0])')"
read -r py_ok py_real py_version <<<"$py_info"
[ "$py_ok" = 1 ] || fail "bastion-migrate needs Python 3.11 or newer; '$base_python' is $py_version (ubuntu-22.04's is 3.10): $setup_python."

# The package index the team configured: uv's own variables, else pip's, carried over (uv ignores PIP_INDEX_URL).
if [ -z "${UV_DEFAULT_INDEX:-}${UV_INDEX_URL:-}" ] && [ -n "${PIP_INDEX_URL:-}" ]; then
  export UV_INDEX_URL="$PIP_INDEX_URL"
fi
index="${UV_DEFAULT_INDEX:-${UV_INDEX_URL:-${PIP_INDEX_URL:-https://pypi.org/simple}}}"
index_help="if the package index $index cannot be reached from this runner, set UV_DEFAULT_INDEX (or PIP_INDEX_URL) to a mirror it can reach"
# An unreachable index fails in seconds, not after uv's and pip's minutes of retries.
export UV_HTTP_TIMEOUT="${UV_HTTP_TIMEOUT:-5}" UV_HTTP_RETRIES="${UV_HTTP_RETRIES:-1}"

# One virtualenv per set, lock file and interpreter: venv-<set>-<hash>.
key_of() { (cat "$1" "$uv_lock"; echo "$py_real $py_version") | sha256sum | cut -c1-16; }
cache="${RUNNER_TOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}}/bastion-migrate"
name="$set_name-$(key_of "$lock")"
if [ "$set_name" = lightweight ]; then
  # The full set holds every lightweight pin (tests/unit/test_packaging.py): one built already serves.
  full="full-$(key_of "$root/requirements.txt")"
  if [ -f "$cache/venv-$full/.complete" ]; then name="$full"; fi
fi
venv="$cache/venv-$name"

publish() {
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    echo "python=$venv/bin/python" >>"$GITHUB_OUTPUT"
  else
    echo "$venv/bin/python"
  fi
  # For the job's later steps: which virtualenv this was, the key of an actions/cache recipe (docs/usage.md).
  if [ -n "${GITHUB_ENV:-}" ]; then
    echo "BASTION_MIGRATE_VENV_KEY=$name" >>"$GITHUB_ENV"
  fi
}

compile_action() {
  # The action's own modules, byte-compiled once per checkout of it (runners may not write bytecode at
  # run time); a read-only checkout just compiles in memory at each run, as before.
  if [ ! -d "$root/bastion_action/__pycache__" ]; then
    "$venv/bin/python" -m compileall -q "$root/bastion_action" >/dev/null 2>&1 || true
  fi
}

if [ -f "$venv/.complete" ]; then
  compile_action
  publish
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock-$name"
flock -w 600 9 || fail "timed out waiting for another job to build $venv"

if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  uv="$(command -v uv || true)"
  if [ -z "$uv" ]; then
    # uv installs the lock in well under a second where pip takes ~10 s; bring it in once.
    uv_dir="$cache/uv-$(sha256sum "$uv_lock" | cut -c1-16)"
    if [ ! -x "$uv_dir/bin/uv" ]; then
      rm -rf "$uv_dir.tmp"
      "$base_python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
        --timeout 5 --retries 1 --index-url "$index" \
        --target "$uv_dir.tmp" -r "$uv_lock" >&2 || fail "could not install uv with pip: $index_help"
      rm -rf "$uv_dir"
      mv "$uv_dir.tmp" "$uv_dir"
    fi
    uv="$uv_dir/bin/uv"
  fi
  "$uv" venv --quiet --python "$py_real" "$venv" >&2
  # Bytecode is compiled now: a venv in the tool cache may not be writable at run time, and
  # compiling on every run costs more than the whole SSH connection.
  "$uv" pip install --quiet --require-hashes --compile-bytecode --python "$venv/bin/python" -r "$lock" >&2 \
    || fail "could not install the action's dependencies from ${lock##*/}: $index_help"
  touch "$venv/.complete"
  compile_action
  echo "bastion-migrate: built $venv in $(( ($(date +%s%N) - started_ns) / 1000000 )) ms" >&2
fi
publish
