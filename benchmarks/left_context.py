"""How much left context streaming needs: dev accuracy and decoding cost per `--left-chunks`.

    python benchmarks/left_context.py --model exp/synthetic/all/final.pt \
        --manifest data/synthetic/dev.jsonl --left-chunks 4 8 16 --out left.json
    python benchmarks/left_context.py --random-model --manifest none --left-chunks 2 4 --limit 2   # smoke run

A streaming step attends to `left_chunks` chunks before its own, and keeps their keys and values
in the stream's cache. Every step copies that cache in and out (a server's steps gather and
scatter their streams' rows) and attends over it, so its cost grows with the left context,
while the accuracy gained from more context flattens. This measures both, on the code path
the server runs (`StreamingRecognizer`, the traced torch step, the server's decoder `--decoder`,
endpointing on, audio fed 100 ms at a time):

- **accuracy**, per left context: WER and CER of the joined finals (1) of every utterance of
  `--manifest` decoded alone, and (2) of streams of `--join` utterances back to back (the load
  benchmark's continuous shape, where a stream's cache carries context from its earlier
  utterances). Each is compared with `--reference` (the left context served before, 16) by a
  paired bootstrap over utterances, resp. over streams (`mtspeech.evaluation.stats`).
- **cost**: the median time of one batched `step` of `--batch` streams, per left context,
  repeats interleaved so that machine noise hits every setting alike, as a ratio to the
  reference's time in the same run.

The choice rule (`choice`): the smallest left context whose WER is not worse than the
reference's by more than `--margin` (the upper end of the paired 95 % interval of the WER
difference at most `--margin`, in both shapes). Decide on dev only.
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
    ap.add_argument("--left-chunks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--reference", type=int, default=16, help="the left context compared against")
    ap.add_argument("--margin", type=float, default=0.01, help="largest WER loss (absolute) the choice may cost")
    ap.add_argument("--decoder", default="auto", help="the token decoder (the server's default: auto)")
    ap.add_argument("--chunk-frames", type=int, default=8)
    ap.add_argument("--join", type=int, default=4, help="utterances per continuous stream")
    ap.add_argument("--batch", type=int, default=48, help="streams per timed step")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats")
    ap.add_argument("--steps", type=int, default=8, help="steps per timing repeat")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a server worker's 1)")
    ap.add_argument("--out", default=None)


def _recognizer(model, left: int, args):
    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.streaming import StreamingConfig

    return load_recognizer(model, DecodingConfig(decoder=args.decoder), "torch",
                           streaming=StreamingConfig(chunk_frames=args.chunk_frames, left_chunks=left))


def _decode(rec, samples: np.ndarray) -> str:
    """The joined finals of one stream fed `samples` in real-time-sized pieces."""
    from mtspeech.streaming import FinalEvent

    return " ".join(e.text for e in stream_live(rec, samples, seconds=FEED_SECONDS) if isinstance(e, FinalEvent))


def _chunk_seconds(args) -> float:
    """Seconds of audio one chunk of `--chunk-frames` encoder frames holds."""
    from mtspeech.data.geometry import FrameGeometry

    return args.chunk_frames * FrameGeometry().frame_shift_s


def _step_seconds(recs: dict, audio: list[np.ndarray], args) -> dict[int, list[float]]:
    """Per left context: the mean step time of each of `repeats` runs of `steps` batched steps,
    repeats interleaved across the left contexts."""
    from mtspeech.data.geometry import SAMPLE_RATE

    need = (args.repeats * args.steps + 4) * _chunk_seconds(args) * SAMPLE_RATE  # samples each stream must hold
    long = [np.tile(a, int(np.ceil(need / len(a))) + 1) for a in audio[: args.batch]]
    streams = {}
    for left, rec in recs.items():
        streams[left] = [rec.new_stream(endpointing=False) for _ in range(args.batch)]
        for i, s in enumerate(streams[left]):
            rec.accept(s, long[i % len(long)])
        for _ in range(2):  # warm up (the traced graph's first runs optimise it)
            rec.step(streams[left])
    times: dict[int, list[float]] = {left: [] for left in recs}
    for _ in range(args.repeats):
        for left, rec in recs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                rec.step(streams[left])
                for s in streams[left]:
                    rec.events(s)
            times[left].append((time.perf_counter() - t0) / args.steps)
    return times


def run(args) -> dict:
    import torch

    from mtspeech.metrics import cer, utterance_word_errors, wer
    from mtspeech.streaming import SAMPLE_RATE

    torch.set_num_threads(args.threads)
    lefts = sorted(set(args.left_chunks) | {args.reference})
    model = model_path(args)
    audio, refs = transcribed_audio(args.manifest, args.limit, args.random_model)
    groups = [list(range(i, min(i + args.join, len(audio)))) for i in range(0, len(audio), args.join)]
    recs = {left: _recognizer(model, left, args) for left in lefts}
    shapes = {"utterances": {}, "continuous": {}}
    for left, rec in recs.items():
        print(f"left {left}: decoding {len(audio)} utterances and {len(groups)} streams", file=sys.stderr, flush=True)
        hyps = [_decode(rec, a) for a in audio]
        joined_refs = [" ".join(refs[i] for i in g) for g in groups]
        joined_hyps = [_decode(rec, np.concatenate([audio[i] for i in g])) for g in groups]
        for shape, (r, h) in {"utterances": (refs, hyps), "continuous": (joined_refs, joined_hyps)}.items():
            shapes[shape][left] = {"wer": wer(r, h).rate, "cer": cer(r, h).rate,
                                   "errors": [(e.errors, e.ref_len) for e in utterance_word_errors(r, h)]}
    times = _step_seconds(recs, audio, args)
    ref_time = statistics.median(times[args.reference])
    rows = []
    for left in lefts:
        t = statistics.median(times[left])
        row = {"left_chunks": left, "left_seconds": round(left * _chunk_seconds(args), 2),
               "step_ms": round(t * 1e3, 2), "step_time_vs_reference": round(t / ref_time, 3),
               "step_ms_repeats": [round(x * 1e3, 2) for x in times[left]]}
        for shape, by_left in shapes.items():
            row[shape] = {"wer": round(by_left[left]["wer"], 5), "cer": round(by_left[left]["cer"], 5)}
            if left != args.reference:
                row[shape] |= wer_delta(by_left[args.reference]["errors"], by_left[left]["errors"])
        rows.append(row)
    passing = [r["left_chunks"] for r in rows if r["left_chunks"] == args.reference
               or all(r[s]["ci"][1] <= args.margin for s in shapes)]
    return {"benchmark": "left_context", "model": "random-tiny" if args.random_model else str(args.model),
            "manifest": args.manifest, "utterances": len(audio), "streams": len(groups),
            "audio_s": round(sum(len(a) for a in audio) / SAMPLE_RATE, 2),
            "settings": {k: getattr(args, k) for k in ("decoder", "chunk_frames", "join", "batch", "repeats", "steps",
                                                          "threads", "reference", "margin")},
            "rule": f"the smallest left context whose paired 95 % upper bound of the WER difference to left "
                    f"{args.reference} is <= {args.margin} in both shapes",
            "rows": rows, "choice": min(passing)}


def render(result: dict) -> str:
    s = result["settings"]
    lines = [f"left context on {result['manifest']}: {result['utterances']} utterances ({result['audio_s']} s), "
             f"and {result['streams']} streams of {s['join']} back to back; decoder {s['decoder']}, chunks of "
             f"{s['chunk_frames']} frames; step time: {s['batch']} streams a step, {s['threads']} thread(s), median "
             f"of {s['repeats']} interleaved repeats",
             f"{'left':>4s} {'s':>5s} {'WER alone':>9s} {'d vs ref [95% CI]':>26s} {'WER joined':>10s} "
             f"{'d vs ref [95% CI]':>26s} {'ms/step':>8s} {'vs ref':>7s}"]
    for r in result["rows"]:
        cells = []
        for shape in ("utterances", "continuous"):
            x = r[shape]
            d = (f"{x['delta_wer']:+.4f} [{x['ci'][0]:+.4f}, {x['ci'][1]:+.4f}]" if "ci" in x else "reference")
            cells += [f"{x['wer']:.4f}", d]
        lines.append(f"{r['left_chunks']:4d} {r['left_seconds']:5.2f} {cells[0]:>9s} {cells[1]:>26s} {cells[2]:>10s} "
                     f"{cells[3]:>26s} {r['step_ms']:8.1f} {r['step_time_vs_reference']:6.2f}x")
    lines.append(f"rule: {result['rule']}; choice: {result['choice']} chunks")
    return "\n".join(lines)


def main(argv=None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
