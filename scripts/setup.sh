#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: system packages where missing,
# then a virtual environment in .venv with exactly requirements.lock installed, then mtspeech
# itself (editable, no dependencies), then an import check of the native extensions.
#   MTSPEECH_BROWSER=1 also installs Debian's chromium (for the web-page test).
#   MTSPEECH_NGINX=1 also installs Debian's nginx (deploy/replicas.py and its slow test; the
#   package's own service is not used: the script runs nginx unprivileged in a run folder).
#   MTSPEECH_PEERS=1 also installs the peer tools of benchmarks/peers.py (requirements-peers.lock).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
# the corpus text: 30 files of the full fortunes package (mtspeech/data/sentences.py)
[ -f /usr/share/games/fortunes/wisdom ] || need+=(fortunes)
command -v sox >/dev/null || need+=(sox)
# The demo corpus's other engines (mtspeech/data/engines/): flite's built-in voices and
# festival's English voices, each voice a Debian package of its own.
command -v flite >/dev/null || need+=(flite)
command -v text2wave >/dev/null || need+=(festival)
for voice in festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts; do
  dpkg -s "$voice" >/dev/null 2>&1 || need+=("$voice")
done
if [ "${MTSPEECH_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null; then need+=(chromium); fi
# (nginx lives in /usr/sbin, which a non-root PATH may lack)
if [ "${MTSPEECH_NGINX:-0}" = 1 ] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then need+=(nginx); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Install exactly requirements.lock (every transitive package pinned, with hashes), then the
# project itself without dependencies. Skipped when the venv was installed from these very
# files: the stamp holds their checksum, so a changed lock re-installs.
stamp=.venv/.mtspeech-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages from requirements.lock into .venv (first time: ~5.6 GB, a few minutes)"
  .venv/bin/python -m pip install -q --upgrade "pip>=24"
  .venv/bin/python -m pip install -q --require-hashes --no-deps -r requirements.lock
  # (setuptools' editable-install warnings are noise: shown only if the step fails)
  out=$(.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1) || { echo "$out" >&2; exit 1; }
  rm -f "$stamp"
  # Both checks run before the stamp is written, so a failed install is retried next time.
  .venv/bin/python scripts/check_install.py
  # (resemblyzer's stated `typing` is the Python 2 backport: the standard library has it)
  report=$(.venv/bin/python -m pip check || true)
  if problems=$(grep -v -e "requires typing, which is not installed" -e "^No broken requirements" <<<"$report"); then
    echo "$problems" >&2; echo "setup: pip check found conflicts (above)" >&2; exit 1
  fi
  echo "$want" > "$stamp"
fi
if [ "${MTSPEECH_PEERS:-0}" = 1 ] && ! .venv/bin/python -c "import silero_vad, resemblyzer" 2>/dev/null; then
  echo "setup: installing the peer tools (silero-vad, resemblyzer, pyroomacoustics) from requirements-peers.lock"
  .venv/bin/python -m pip install -q --require-hashes --no-deps -r requirements-peers.lock
fi
