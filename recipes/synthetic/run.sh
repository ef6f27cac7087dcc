#!/usr/bin/env bash
# The main job on the embedded default: synthetic LibriSpeech-format corpus → manifests →
# joint training of all four tasks → evaluation → transcription through the server.
# Every step skips work already done, so a re-run resumes where it stopped.
#   HOURS=0.3 EPOCHS=5 bash recipes/synthetic/run.sh     # a quicker, smaller run (augmentation
#                                                         # starts at epoch 9, so it trains clean)
#   COMPARE_PLAIN=1 bash recipes/synthetic/run.sh         # also train the demo without augmentation
#                                                         # and measure what augmentation costs
#   SEED=1 EXP=exp/synthetic/all-seed1 PLAIN=exp/synthetic/plain-seed1 COMPARE_PLAIN=1 bash ...
#                                                         # the same with another training seed
#   TRAIN_VOICES=0 EXP=exp/synthetic/all-28 bash ...      # train on `train` alone (28 voices),
#                                                         # without train-voices' 30 more
set -euo pipefail
cd "$(dirname "$0")/../.."
# One line per step with its start time, and `done` at the end: the run's own timing log, which
# `python scripts/command_costs.py measure main -- bash recipes/synthetic/run.sh` reports per step.
RUN_LOG=${RUN_LOG:-exp/synthetic/run-steps.jsonl}
mkdir -p "$(dirname "$RUN_LOG")"
step() { printf '{"step": "%s", "at": %s}\n' "$1" "$(date +%s)" >> "$RUN_LOG"; }
step setup
bash scripts/setup.sh
source .venv/bin/activate

CORPUS=${CORPUS:-data/synthetic/corpus}
DATA=${DATA:-data/synthetic}
EXP=${EXP:-exp/synthetic/all}
HOURS=${HOURS:-1.5}
# The demo recipe: conformer.yaml plus the loader's noise augmentation, started late (see the
# recipe's comment and docs/results/grid-augment/ for why this setting).
RECIPE=${RECIPE:-recipes/synthetic/demo.yaml}
PLAIN=${PLAIN:-exp/synthetic/plain}
schedule=()  # shared by the demo and its COMPARE_PLAIN twin
[ -n "${EPOCHS:-}" ] && schedule+=(--set "train.epochs=$EPOCHS")
[ -n "${SEED:-}" ] && schedule+=(--set "train.seed=$SEED")
# What the demo trains on (demo.yaml: train and train-voices); `analyze` counts its sentences.
TRAIN_VOICES=${TRAIN_VOICES:-1}
train=("$DATA/train.jsonl" "$DATA/train-voices.jsonl")
[ "$TRAIN_VOICES" = 1 ] || { train=("$DATA/train.jsonl"); schedule+=(--set "data.train=$DATA/train.jsonl"); }
overrides=(--set "exp_dir=$EXP" "${schedule[@]}")

step synthesize
echo "== 1/5 synthesize the corpus ($HOURS h) into $CORPUS, and noisy, room and telephone twins"
[ -f "$CORPUS/SPEAKERS.TXT" ] || mtspeech synth --out "$CORPUS" --hours "$HOURS"
# test-voices: 24 more held-out speakers on voice variants no other split uses, 8 test
# sentences each (test-unseen's 4 voices are too few to rank speaker embeddings).
[ -f "$CORPUS/test_voices.json" ] || mtspeech synth --out "$CORPUS" --voices-only
# the test splits again at 10 and 0 dB SNR (white, pink, brown, babble): test-snr10, ...; and
# through simulated rooms (RT60 0.3-0.9 s, no noise): test-room, ...
[ -d "$CORPUS/test-voices-room" ] || mtspeech synth --out "$CORPUS" --twins-only
# dev and test through a telephone channel (8 kHz, 300-3400 Hz, a call level, mu-law), stored at
# 8 kHz so reading them resamples as the server resamples a call: dev-phone, test-phone. (A fresh
# corpus got them from --twins-only above; this line adds them to an older one.)
[ -d "$CORPUS/test-phone" ] || mtspeech synth --out "$CORPUS" --phone-twins-only
# train-voices: 30 more training speakers, on voice variants no other split uses (with train's
# 28 the speaker head hears too few voices to place new ones: docs/results/grid-train-voices/).
[ -f "$CORPUS/train_voices.json" ] || mtspeech synth --out "$CORPUS" --train-voices-only

step prepare
echo "== 2/5 prepare manifests into $DATA"
[ -f "$DATA/train-voices.jsonl" ] && [ -f "$DATA/test-voices-room.jsonl" ] && [ -f "$DATA/test-phone.jsonl" ] || \
  mtspeech prepare librispeech "$CORPUS" --out "$DATA"

step train
echo "== 3/5 train $EXP (resumes from $EXP/last.pt)"
[ -f "$EXP/final.pt" ] || mtspeech train --config "$RECIPE" "${overrides[@]}"
# The word trigram of the training transcripts goes inside final.pt, so `--lm auto` (evaluate,
# serve) needs nothing but the checkpoint.
[ -f "$EXP/lm-embedded" ] || { mtspeech embed-lm "$EXP/final.pt" && touch "$EXP/lm-embedded"; }

step evaluate
echo "== 4/5 evaluate every task on test (seen speakers), test-unseen, test-voices (new voices), test-engine (festival, never trained on) and test-phone (test through a telephone channel)"
# eval-SPLIT: greedy decoding (--decoder greedy: the default, auto, would use the LM embedded
# above, as `mtspeech serve` does). eval-SPLIT-lm: beam search with
# a word trigram of the training transcripts, on the ASR head's pieces and on the phone head
# (words spelled in phones through CMUdict: phones/wer, phones/cer).
for split in test test-unseen test-voices test-engine test-phone; do
  [ -f "$EXP/eval-$split/results.json" ] || \
    mtspeech evaluate "$EXP/final.pt" "$DATA/$split.jsonl" --out "$EXP/eval-$split" --decoder greedy
  [ -f "$EXP/eval-$split-lm/results.json" ] || \
    mtspeech evaluate "$EXP/final.pt" "$DATA/$split.jsonl" --out "$EXP/eval-$split-lm" \
      --decoder beam --beam-size 20 --lm auto --lm-weight 1.0
done
# The noisy and reverberant twins, greedy: how the heads hold up in noise and in rooms.
for split in test-snr10 test-snr0 test-unseen-snr10 test-unseen-snr0 test-voices-snr10 test-voices-snr0 \
    test-room test-unseen-room test-voices-room; do
  [ -f "$EXP/eval-$split/results.json" ] || \
    mtspeech evaluate "$EXP/final.pt" "$DATA/$split.jsonl" --out "$EXP/eval-$split" --decoder greedy
done
if [ -n "${COMPARE_PLAIN:-}" ]; then
  # The same recipe without augmentation, same seed and schedule, then the paired bootstrap of
  # each split's error rates: augmented minus plain (issue 14 allows +0.5 CER points on test).
  plain_overrides=(--set "exp_dir=$PLAIN" --set data.augment=null "${schedule[@]}")
  [ -f "$PLAIN/final.pt" ] || mtspeech train --config "$RECIPE" "${plain_overrides[@]}"
  for split in test test-unseen test-voices test-snr10 test-snr0 test-unseen-snr10 test-unseen-snr0 \
      test-voices-snr10 test-voices-snr0 test-room test-unseen-room test-voices-room test-phone; do
    [ -f "$PLAIN/eval-$split/results.json" ] || \
      mtspeech evaluate "$PLAIN/final.pt" "$DATA/$split.jsonl" --out "$PLAIN/eval-$split" --decoder greedy
    echo "-- $split, greedy"
    mtspeech compare "$PLAIN/eval-$split" "$EXP/eval-$split" --labels plain augmented \
      --json "$EXP/compare-plain/$split.json"
  done
  # The word decoders too (beam + trigram on the ASR head's pieces, and the phone head → words),
  # on the clean splits, at 10 dB and through the telephone channel.
  [ -f "$PLAIN/lm-embedded" ] || { mtspeech embed-lm "$PLAIN/final.pt" && touch "$PLAIN/lm-embedded"; }
  for split in test test-unseen test-voices test-snr10 test-unseen-snr10 test-voices-snr10 test-phone; do
    for exp in "$PLAIN" "$EXP"; do
      [ -f "$exp/eval-$split-lm/results.json" ] || \
        mtspeech evaluate "$exp/final.pt" "$DATA/$split.jsonl" --out "$exp/eval-$split-lm" \
          --decoder beam --beam-size 20 --lm auto --lm-weight 1.0
    done
    for task in asr phones; do
      echo "-- $split, $task head, beam 20 + word trigram"
      mtspeech compare "$PLAIN/eval-$split-lm" "$EXP/eval-$split-lm" --task "$task" \
        --labels plain augmented --json "$EXP/compare-plain/$split-lm-$task.json"
    done
  done
  # Issue 14's ASR goals for this seed (clean cost, 10 dB ratio). Over several seeds, and with
  # benchmarks/peers.py's VAD and speaker numbers: `python benchmarks/demo_goals.py --compare
  # exp/synthetic/all/compare-plain exp/synthetic/all-seed1/compare-plain ... --peers ...`.
  python benchmarks/demo_goals.py --compare "$EXP/compare-plain" --out "$EXP/compare-plain/goals.json"
fi
# Word accuracy on test by how many training sentences contain the word (mtspeech analyze).
# On test-engine too, whose sentences hold words no training sentence has: its in- and
# out-of-vocabulary word accuracy (IV / OOV).
for split in test test-engine; do
  mtspeech analyze --train "${train[@]}" --manifest "$DATA/$split.jsonl" \
    --greedy "$EXP/eval-$split" --lm "$EXP/eval-$split-lm"
done
python - "$EXP" <<'PY'
import json, sys
exp = sys.argv[1]
runs = [(s, k, x) for s in ("test", "test-unseen", "test-voices", "test-engine", "test-phone")
        for k, x in (("greedy", ""), ("word LM", "-lm"))]
runs += [(s, "greedy", "") for s in ("test-snr10", "test-snr0", "test-unseen-snr10", "test-unseen-snr0",
                                     "test-voices-snr10", "test-voices-snr0", "test-room", "test-unseen-room",
                                     "test-voices-room")]
for split, kind, suffix in runs:
    r = json.load(open(f"{exp}/eval-{split}{suffix}/results.json"))
    print(f"{split:18s} {kind:8s}", "  ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items())
                                           if isinstance(v, (int, float))))
PY

step serve
echo "== 5/5 transcribe a test file through the streaming server"
PORT=${PORT:-8765}
# The default decoder (auto) streams the best one the checkpoint allows: it carries its LM
# (embed-lm above) and has a phone head, so words through the phone head and CMUdict.
mtspeech serve --model "$EXP/final.pt" --port "$PORT" > "$EXP/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
python - "$PORT" <<'PY'
import sys, time, urllib.request
for _ in range(120):  # wait up to a minute for the model to load
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1)
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("server did not come up; see the serve.log in the experiment folder")
PY
FILE=$(python -c "import json,sys; print(json.loads(open('$DATA/test.jsonl').readline())['audio'])")
REF=$(python -c "import json,sys; print(json.loads(open('$DATA/test.jsonl').readline())['text'])")
[ -f "$FILE" ] || FILE="$DATA/$FILE"
mtspeech transcribe --server "ws://127.0.0.1:$PORT" --realtime "$FILE"
echo "reference: $REF"
step done
echo "done: model $EXP/final.pt, reports $EXP/eval-*/report.md; serve it with: mtspeech serve --model $EXP/final.pt"
