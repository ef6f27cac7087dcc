#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: system packages where missing,
# then a virtual environment in .venv with mtspeech installed (editable) and its test extras.
#   MTSPEECH_BROWSER=1 also installs Debian's chromium (for the web-page test).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
[ -d /usr/share/games/fortunes ] || need+=(fortunes-min)
command -v sox >/dev/null || need+=(sox)
if [ "${MTSPEECH_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null; then need+=(chromium); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Skip pip entirely when the installed package already matches pyproject.toml.
stamp=.venv/.mtspeech-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv (first time: ~5 GB, a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
