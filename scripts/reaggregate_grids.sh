#!/usr/bin/env bash
# Re-report every committed ablation grid by the current rules (seed-aware intervals, the
# declared family with Holm/BH adjustment, no verdict below 3 seeds) from its results.json:
# the grids' runs and per-utterance errors were not kept, only their per-seed metrics and the
# utterance bootstrap against the grid's own baseline (see `reaggregate` in
# mtspeech/ablation/report.py). Each `vs-X/` folder is the same runs against variant X.
# Idempotent: reading a re-aggregated results.json gives the same report.
# It also draws what is not committed, to keep docs/results/ small: the per-split plots
# (plots/test*), each vs-X/ view, and the relatedness plots from their JSON sidecars
# (scripts/redraw_curves.py, first, so the reports find them). Commit only what was committed.
#   bash scripts/reaggregate_grids.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MT=${MTSPEECH:-.venv/bin/mtspeech}
PY=${PYTHON:-.venv/bin/python}
R=docs/results
"$PY" scripts/redraw_curves.py "$R"
again() {  # again FOLDER [BASELINE]: FOLDER/results.json re-reported (into FOLDER/vs-BASELINE/)
  local dir=$1 base=${2:-}
  if [ -z "$base" ]; then
    "$MT" ablate --report-only --from-results "$dir/results.json" --out "$dir"
  else
    "$MT" ablate --report-only --from-results "$dir/results.json" --out "$dir/vs-$base" --baseline "$base"
  fi
}
for dir in "$R"/grid-*/ "$R"/grid-augment/sitting3/ "$R"/grid-augment/sitting4/; do
  # a grid reported from its runs under today's protocol (dev-only selection) keeps that report
  grep -q '"selection_splits"' "$dir/results.json" && continue
  again "${dir%/}"
done
again "$R/grid-sharing" +phones
again "$R/grid-sharing" +phones_top
again "$R/grid-sharing" all
again "$R/grid-hierarchy" +phones
again "$R/grid-weighting" all
again "$R/grid-augment/sitting4" aug_from6_noroom_snr20
