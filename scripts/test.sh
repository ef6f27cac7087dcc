#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, slow end-to-end tests included.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
MTSPEECH_BROWSER=1 MTSPEECH_NGINX=1 bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
