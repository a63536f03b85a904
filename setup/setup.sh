#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs everything probeforge needs on a fresh Debian 12 machine: the Debian packages in
# setup/debian-packages.txt and the virtualenv .venv with pyproject.toml's pinned packages.
# Idempotent: a second run checks, changes nothing and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
did_something=0

mapfile -t wanted < <(grep -v -E '^\s*(#|$)' setup/debian-packages.txt)
missing=()
for pkg in "${wanted[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    apt=(apt-get)
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    apt=(sudo -n apt-get)
  else
    die "Debian packages missing (${missing[*]}) and neither root nor password-less sudo: run 'sudo apt-get install ${missing[*]}' and then this again"
  fi
  say "installing Debian packages: ${missing[*]}"
  "${apt[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}"
  did_something=1
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$python is older than 3.11: install Python 3.11 or set PYTHON=/path/to/python3.11"

# The stamp records what the venv was built from; a changed pyproject.toml rebuilds it.
stamp=.venv/.probeforge-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    say "creating the virtualenv .venv"
    rm -rf .venv
    "$python" -m venv .venv
  fi
  say "installing Python packages into .venv (ansible takes a minute or two)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$want" > "$stamp"
  did_something=1
fi

if ((did_something)); then
  say "done: run 'make rig' for the virtual rig or 'make test' for the tests"
else
  say "nothing to do: Debian packages and .venv are up to date"
fi
