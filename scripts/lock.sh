#!/usr/bin/env bash
# Refresh requirements.lock from pyproject.toml: every transitive package pinned, with hashes.
# The lock is universal (any OS, Python >= 3.10): pip installs only the lines whose markers
# match the machine. Run this after changing a dependency in pyproject.toml, then commit both.
#   bash scripts/lock.sh            # re-resolve, keeping locked versions where still allowed
#   bash scripts/lock.sh --upgrade  # move every package to its newest allowed version
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
PY=${PYTHON:-python3}
if [ ! -x .tools/bin/uv ] || [ "$(.tools/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  [ -x .tools/bin/python ] || "$PY" -m venv .tools
  .tools/bin/python -m pip install -q "uv==$UV_VERSION"
fi
.tools/bin/uv pip compile pyproject.toml --extra test --extra docs --generate-hashes --universal \
  --python-version 3.10 --quiet "$@" -o requirements.lock
echo "lock: wrote requirements.lock ($(grep -c '^[A-Za-z0-9]' requirements.lock) packages)"
# The peer tools of benchmarks/peers.py, locked on top of (and agreeing with) the main lock.
# resemblyzer lists the Python 2 `typing` backport, which the standard library replaces.
.tools/bin/uv pip compile pyproject.toml --extra test --extra docs --extra peers --generate-hashes --universal \
  --python-version 3.10 --quiet -c requirements.lock --no-emit-package typing "$@" -o requirements-peers.lock
echo "lock: wrote requirements-peers.lock ($(grep -c '^[A-Za-z0-9]' requirements-peers.lock) packages)"
