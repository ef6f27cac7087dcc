#!/usr/bin/env bash
# The final test set, scored once, at the end (issue 30): every other test split of the demo
# corpus has informed a recipe choice, so the demo's headline numbers are reported on
# test-final, which nothing was ever tuned on (docs/data.md, "The final test set").
#   bash recipes/synthetic/run.sh      # first: corpus, manifests, the demo model (never touches test-final)
#   bash recipes/synthetic/final.sh    # then, once: synthesize test-final (seed 30) and score the demo on it
# It writes $EXP/eval-test-final{,-lm}, eval-test-final-snr10, -snr0, -room and
# $EXP/final-test.json (when it was first scored, and the checkpoint's sha256). A second run
# scores nothing that is already scored; deleting those folders to score a changed model
# again is tuning on the final test set, so it is said out loud.
set -euo pipefail
cd "$(dirname "$0")/../.."
source .venv/bin/activate

CORPUS=${CORPUS:-data/synthetic/corpus}
DATA=${DATA:-data/synthetic}
EXP=${EXP:-exp/synthetic/all}
[ -f "$EXP/final.pt" ] || { echo "no $EXP/final.pt: train the demo first (bash recipes/synthetic/run.sh)" >&2; exit 2; }
[ -f "$CORPUS/synth.json" ] || { echo "no corpus in $CORPUS: run recipes/synthetic/run.sh first" >&2; exit 2; }

echo "== 1/3 synthesize test-final and its noisy and room twins into $CORPUS (once; seed: mtspeech.data.final_test.FINAL_SEED)"
[ -f "$CORPUS/test_final.json" ] || mtspeech synth --out "$CORPUS" --final-only

echo "== 2/3 manifests into $DATA (the other splits' finished chapters are reused)"
[ -f "$DATA/test-final-room.jsonl" ] || mtspeech prepare librispeech "$CORPUS" --out "$DATA"

echo "== 3/3 score $EXP/final.pt on test-final, once"
# run.sh has embedded the word trigram already; this only covers a model trained without it.
[ -f "$EXP/lm-embedded" ] || { mtspeech embed-lm "$EXP/final.pt" && touch "$EXP/lm-embedded"; }
python - "$EXP" <<'PY'
import hashlib, json, sys, time
from pathlib import Path
exp = Path(sys.argv[1])
record, digest = exp / "final-test.json", hashlib.sha256((exp / "final.pt").read_bytes()).hexdigest()
if record.is_file():
    first = json.loads(record.read_text())
    if first["checkpoint_sha256"] != digest:
        print(f"WARNING: test-final was first scored at {first['first_scored']} on another checkpoint; "
              "scoring a changed model on it again is tuning on the final test set", file=sys.stderr)
else:
    record.write_text(json.dumps({"first_scored": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "checkpoint_sha256": digest}, indent=1) + "\n")
PY
# The same decoders as run.sh's headline splits: greedy, and beam search with the word
# trigram embedded in final.pt; the twins greedy.
[ -f "$EXP/eval-test-final/results.json" ] || \
  mtspeech evaluate "$EXP/final.pt" "$DATA/test-final.jsonl" --out "$EXP/eval-test-final" --decoder greedy
[ -f "$EXP/eval-test-final-lm/results.json" ] || \
  mtspeech evaluate "$EXP/final.pt" "$DATA/test-final.jsonl" --out "$EXP/eval-test-final-lm" \
    --decoder beam --beam-size 20 --lm auto --lm-weight 1.0
for split in test-final-snr10 test-final-snr0 test-final-room; do
  [ -f "$EXP/eval-$split/results.json" ] || \
    mtspeech evaluate "$EXP/final.pt" "$DATA/$split.jsonl" --out "$EXP/eval-$split" --decoder greedy
done
python - "$EXP" <<'PY'
import json, sys
exp = sys.argv[1]
for split, kind, suffix in [("test-final", "greedy", ""), ("test-final", "word LM", "-lm"),
                            ("test-final-snr10", "greedy", ""), ("test-final-snr0", "greedy", ""),
                            ("test-final-room", "greedy", "")]:
    r = json.load(open(f"{exp}/eval-{split}{suffix}/results.json"))
    print(f"{split:18s} {kind:8s}", "  ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items())
                                           if isinstance(v, (int, float))))
PY
echo "done: reports $EXP/eval-test-final*/report.md (scored once: nothing may be tuned on them)"
