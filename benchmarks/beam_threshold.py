"""How far the served beam search can prune: dev accuracy and decoding cost per beam threshold.

    python benchmarks/beam_threshold.py --model exp/synthetic/all/final.pt \
        --manifest data/synthetic/dev.jsonl --thresholds 50 25 15 12 10 8 6 --out beam.json
    python benchmarks/beam_threshold.py --random-model --manifest none --limit 2   # smoke run

flashlight's beam search keeps, each frame, the hypotheses scoring within `beam_threshold` (log
domain) of the best, at most `--beam-size` of them. At the old default of 50 it prunes almost
nothing, so every frame extends all 20 hypotheses by every label and asks the word LM for each:
under load that search was a fifth of the default server's CPU (docs/results/server-load/
profile-default-continuous-2cores.json). A lower threshold drops hypotheses that cannot win.

The head's log-probs come from the server's code path once (`StreamingRecognizer`, the traced
torch step, endpointing on, audio fed 100 ms at a time): each utterance's pieces, exactly as the
recognizer pushed them into its token decoder. They are then decoded by the same streaming
decoder (`BeamDecoder`: begin, push per chunk, end) at each threshold:

- **accuracy**: WER and CER of the joined finals, each threshold against `--reference` (the old
  default) by a paired bootstrap over utterances (`mtspeech.evaluation.stats`), and how many
  utterances' transcripts are identical to the reference's;
- **cost**: CPU microseconds of the searches per frame (pushes and the final's word times),
  the median of `--repeats` repeats interleaved across thresholds so that machine noise hits
  each alike, as a ratio to the reference in the same run.

The choice rule (`choice`): the smallest threshold whose WER is not worse than the reference's
by more than `--margin` (upper end of the paired 95 % interval). Decide on dev only.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import add_model_arguments, model_path, run_main, stream_live, transcribed_audio, wer_delta  # noqa: E402

FEED_SECONDS = 0.1  # as a live client sends audio


def add_arguments(ap) -> None:
    add_model_arguments(ap)
    ap.add_argument("--manifest", default="data/synthetic/dev.jsonl", help="dev utterances with transcripts")
    ap.add_argument("--limit", type=int, default=None, help="first N utterances only")
    ap.add_argument("--decoder", default="auto", help="the beam decoder measured (the server's default: auto)")
    ap.add_argument("--lm", default="auto", help="the word LM (as mtspeech serve --lm); 'none': lexicon-free beam")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[50, 25, 15, 12, 10, 8, 6])
    ap.add_argument("--reference", type=float, default=50.0, help="the threshold compared against")
    ap.add_argument("--margin", type=float, default=0.01, help="largest WER loss (absolute) the choice may cost")
    ap.add_argument("--chunk-frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    ap.add_argument("--out", default=None)


class _Recording:
    """A token decoder that keeps the log-probs its utterances are pushed, piece by piece."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.utterances: list[list[np.ndarray]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def begin(self):
        utterance, pieces = self.inner.begin(), []
        self.utterances.append(pieces)
        push = utterance.push

        def recording_push(log_probs, first_frame):
            pieces.append(np.array(log_probs, dtype=np.float32))
            push(log_probs, first_frame)

        utterance.push = recording_push
        return utterance


def _emissions(rec, name: str, samples: np.ndarray) -> list[list[np.ndarray]]:
    """The pieces of log-probs decoder `name` was pushed for each utterance of one stream."""
    recording = _Recording(rec.decoders[name])
    rec.decoders[name] = recording
    try:
        stream_live(rec, samples, decoder=name, seconds=FEED_SECONDS)
    finally:
        rec.decoders[name] = recording.inner
    return [u for u in recording.utterances if u]


def _decode(decoder, utterances: list[list[np.ndarray]]) -> str:
    """The joined words of one stream's utterances decoded by `decoder` piece by piece."""
    words, first = [], 0
    for pieces in utterances:
        u = decoder.begin()
        for lp in pieces:
            u.push(lp, first)
            first += len(lp)
        words += [w.word for w in u.end().words]
    return " ".join(words)


def _with_threshold(decoder, threshold: float):
    from mtspeech.streaming.decoders import BeamDecoder

    o = decoder.options
    return BeamDecoder(decoder.table, decoder.head, decoder.frame_shift_s, beam_size=o["beam_size"], lm=o["lm"],
                       lexicon=o["lexicon"], lm_weight=o["lm_weight"] if o["lm"] else None,
                       word_score=o["word_score"], beam_threshold=threshold)


def run(args) -> dict:
    import torch

    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.metrics import cer, utterance_word_errors, wer
    from mtspeech.streaming import SAMPLE_RATE, StreamingConfig

    torch.set_num_threads(1)
    thresholds = sorted(set(args.thresholds) | {args.reference}, reverse=True)
    model = model_path(args)
    lm = None if args.lm == "none" or args.random_model else args.lm
    audio, refs = transcribed_audio(args.manifest, args.limit, args.random_model)
    decoder = "beam" if lm is None and args.decoder == "auto" else args.decoder  # no LM: lexicon-free
    decoding = DecodingConfig(decoder=decoder, lm=lm)
    rec = load_recognizer(model, decoding, "torch", streaming=StreamingConfig(chunk_frames=args.chunk_frames))
    name = rec.default_decoder if decoder == "auto" else decoder
    if not rec.decoders[name].options:
        raise SystemExit(f"decoder {name!r} is not a beam search: nothing to prune")
    print(f"{name}: the head's log-probs of {len(audio)} utterances", file=sys.stderr, flush=True)
    emissions = [_emissions(rec, name, a) for a in audio]
    frames = sum(len(lp) for e in emissions for pieces in e for lp in pieces)
    decoders = {t: _with_threshold(rec.decoders[name], t) for t in thresholds}
    hyps, cpu = {}, {t: [] for t in thresholds}
    for _ in range(args.repeats):
        for t, d in decoders.items():
            t0 = time.process_time()
            hyps[t] = [_decode(d, e) for e in emissions]
            cpu[t].append((time.process_time() - t0) / frames * 1e6)
    errors = {t: [(e.errors, e.ref_len) for e in utterance_word_errors(refs, h)] for t, h in hyps.items()}
    ref_cpu = statistics.median(cpu[args.reference])
    rows = []
    for t in thresholds:
        row = {"threshold": t, "wer": round(wer(refs, hyps[t]).rate, 5), "cer": round(cer(refs, hyps[t]).rate, 5),
               "identical_to_reference": sum(a == b for a, b in zip(hyps[t], hyps[args.reference])),
               "cpu_us_per_frame": round(statistics.median(cpu[t]), 2),
               "cpu_vs_reference": round(statistics.median(cpu[t]) / ref_cpu, 3),
               "cpu_us_per_frame_repeats": [round(x, 2) for x in cpu[t]]}
        if t != args.reference:
            row |= wer_delta(errors[args.reference], errors[t])
        rows.append(row)
    passing = [r["threshold"] for r in rows if r["threshold"] == args.reference or r["ci"][1] <= args.margin]
    return {"benchmark": "beam_threshold", "model": "random-tiny" if args.random_model else str(args.model),
            "manifest": args.manifest, "utterances": len(audio), "frames": frames,
            "audio_s": round(sum(len(a) for a in audio) / SAMPLE_RATE, 2),
            "settings": {"decoder": name, "beam_size": rec.decoders[name].options["beam_size"],
                         "chunk_frames": args.chunk_frames, "repeats": args.repeats, "reference": args.reference,
                         "margin": args.margin},
            "rule": f"the smallest threshold whose paired 95 % upper bound of the WER difference to threshold "
                    f"{args.reference:g} is <= {args.margin:g}",
            "rows": rows, "choice": min(passing)}


def render(result: dict) -> str:
    s = result["settings"]
    lines = [f"beam threshold on {result['manifest']}: {result['utterances']} utterances ({result['audio_s']} s, "
             f"{result['frames']} frames); decoder {s['decoder']}, beam {s['beam_size']}; CPU: median of "
             f"{s['repeats']} interleaved repeats, one thread",
             f"{'thr':>5s} {'WER':>7s} {'d vs ref [95% CI]':>26s} {'same':>9s} {'us/frame':>9s} {'vs ref':>7s}"]
    n = result["utterances"]
    for r in result["rows"]:
        d = f"{r['delta_wer']:+.4f} [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]" if "ci" in r else "reference"
        lines.append(f"{r['threshold']:5g} {r['wer']:7.4f} {d:>26s} {r['identical_to_reference']:>4d}/{n:<4d} "
                     f"{r['cpu_us_per_frame']:9.1f} {r['cpu_vs_reference']:6.2f}x")
    lines.append(f"rule: {result['rule']}; choice: {result['choice']:g}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
