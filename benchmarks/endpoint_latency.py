"""Endpoint latency: how much earlier does the VAD head finalize than a CTC-blank-only endpointer?

Every utterance of a manifest (which must carry exact speech segments, field `speech`) is
streamed through the same model twice, locally (no server), with the same endpoint rules
(`mtspeech/endpoint.py`, sherpa-onnx style) and only the non-speech criterion changed:

  * vad   - a frame is non-speech when the VAD head's p(speech) < threshold;
  * blank - a frame is non-speech when the greedy CTC label is the blank (sherpa's criterion).

The encoder and the CTC head see identical input in both modes (endpointing resets only the
greedy decoder, not the encoder cache), so differences come from the endpointer alone.

Audio is fed in `--frame-ms` frames as a live client would send it, each followed by all the
decoding it makes possible, and `--tail-silence` seconds of background noise (matched to the
utterance's own non-speech level; or digital zeros) are appended so the trailing-silence
rules can fire at all. Definitions, per utterance and mode:

  speech end     the end of the last ground-truth speech segment (seconds of stream time);
  finalization   the moment the last final (the one holding the last decoded words) became
                 available: the stream time of audio fed so far when it appeared, i.e. the
                 latency a real-time client would see with zero compute time (it includes
                 waiting for the encoder chunk and its right context to fill);
  delay          finalization - speech end (negative: finalized before speech ended);
  rule delay     FinalEvent.detected_at - speech end: the frame at which the rule fired,
                 without the chunk buffering;
  endpointed     the last final came from a rule (rule2/rule3), not from end of audio (eos).
                 An utterance not endpointed within the tail is finalized at the end of the
                 audio, so its delay is censored at (audio end - speech end).

WER/CER are of the concatenated finals against the reference text (corpus rates). The
comparison is paired over utterances both modes finalized; the baseline is the blank-only
endpointer measured in the same run: `ratio` = mean delay (vad) / mean delay (blank).

    python benchmarks/endpoint_latency.py --model exp/synthetic/all/final.pt --limit 50 --out ep.json
    python benchmarks/endpoint_latency.py --random-model --limit 5     # no training needed
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import add_model_arguments, run_main  # noqa: E402

from mtspeech.endpoint import EndpointConfig  # noqa: E402
from mtspeech.streaming import SAMPLE_RATE, FinalEvent, StreamingConfig, StreamingRecognizer  # noqa: E402

DEFAULT_MANIFEST = "data/synthetic/test.jsonl"
MODES = ("vad", "blank")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    d = EndpointConfig()
    add_model_arguments(ap)
    ap.add_argument("--manifest", default=DEFAULT_MANIFEST, help="JSONL manifest with `speech` segments and `text`")
    ap.add_argument("--limit", type=int, default=50, help="first N usable utterances (0: all)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--frame-ms", type=int, default=40, help="audio fed per step, like a client's frames")
    ap.add_argument("--tail-silence", type=float, default=3.0,
                    help="seconds of non-speech appended after each utterance (>= rule 1 to let rules fire)")
    ap.add_argument("--tail", choices=["noise", "zeros"], default="noise",
                    help="noise: Gaussian at the utterance's own non-speech RMS; zeros: digital silence")
    ap.add_argument("--chunk-frames", type=int, default=StreamingConfig.chunk_frames)
    ap.add_argument("--left-chunks", type=int, default=StreamingConfig.left_chunks)
    ap.add_argument("--speech-threshold", type=float, default=d.speech_threshold, help="VAD mode only")
    ap.add_argument("--rule1", type=float, default=d.rule1_trailing_silence_s, help="seconds (both modes)")
    ap.add_argument("--rule2", type=float, default=d.rule2_trailing_silence_s, help="seconds (both modes)")
    ap.add_argument("--rule3", type=float, default=d.rule3_max_utterance_s, help="seconds (both modes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0, help="tail noise")


# ----------------------------------------------------------------------------- helpers


def _stats(values: list[float]) -> dict:
    """mean/p50/p95/min/max (None when empty)."""
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "min": None, "max": None}
    a = np.asarray(values, dtype=float)
    return {"n": len(a), "mean": round(float(a.mean()), 4), "p50": round(float(np.percentile(a, 50)), 4),
            "p95": round(float(np.percentile(a, 95)), 4), "min": round(float(a.min()), 4),
            "max": round(float(a.max()), 4)}


def _nonspeech_rms(wav: np.ndarray, speech: list) -> float:
    """RMS of the samples outside the speech segments (the recording's background level)."""
    mask = np.ones(len(wav), dtype=bool)
    for start, end in speech:
        mask[max(0, int(start * SAMPLE_RATE)) : int(math.ceil(end * SAMPLE_RATE))] = False
    rest = wav[mask]
    return float(np.sqrt(np.mean(rest.astype(np.float64) ** 2))) if len(rest) else 0.0


def with_tail(wav: np.ndarray, speech: list, seconds: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`wav` followed by `seconds` of zeros or of noise at its non-speech level."""
    n = int(round(seconds * SAMPLE_RATE))
    if n <= 0:
        return wav
    tail = np.zeros(n, dtype=np.float32)
    if kind == "noise":
        tail = (rng.standard_normal(n) * _nonspeech_rms(wav, speech)).astype(np.float32)
    return np.concatenate([wav.astype(np.float32), tail])


def stream_utterance(rec: StreamingRecognizer, wav: np.ndarray, frame: int) -> list[tuple[FinalEvent, float]]:
    """Feed `wav` frame by frame, decoding whenever a chunk is ready; (final, stream time it appeared)."""
    s = rec.new_stream(SAMPLE_RATE, endpointing=True, interim=False)
    finals = []
    for i in range(0, len(wav), frame):
        rec.accept(s, wav[i : i + frame])
        while rec.ready(s):
            rec.step([s])
        now = min(i + frame, len(wav)) / SAMPLE_RATE
        finals += [(e, now) for e in rec.events(s) if isinstance(e, FinalEvent)]
    rec.finish(s)
    finals += [(e, len(wav) / SAMPLE_RATE) for e in rec.events(s) if isinstance(e, FinalEvent)]
    return finals


def load_recognizers(args) -> dict[str, StreamingRecognizer]:
    """One model, two recognizers differing only in the endpoint mode."""
    ckpt = args.model
    tmp = None
    if args.random_model:
        from _tiny_model import build_random_checkpoint

        tmp = tempfile.TemporaryDirectory(prefix="mtspeech_bench_")
        ckpt = build_random_checkpoint(Path(tmp.name) / "tiny_random.pt")
    endpoint = EndpointConfig(mode="vad", speech_threshold=args.speech_threshold,
                              rule1_trailing_silence_s=args.rule1, rule2_trailing_silence_s=args.rule2,
                              rule3_max_utterance_s=args.rule3)
    cfg = StreamingConfig(chunk_frames=args.chunk_frames, left_chunks=args.left_chunks, endpoint=endpoint)
    vad = StreamingRecognizer.from_checkpoint(ckpt, cfg, args.device)
    if tmp is not None:
        tmp.cleanup()
    if vad.vad is None:
        raise SystemExit(f"{ckpt}: the model has no VAD head; there is nothing to compare with blank-only endpointing")
    blank_cfg = replace(cfg, endpoint=replace(endpoint, mode="blank"))
    blank = StreamingRecognizer(vad.model, vad.tokenizer, blank_cfg, args.device)
    return {"vad": vad, "blank": blank}


# ----------------------------------------------------------------------------- the benchmark


def run(args) -> dict:
    from mtspeech.data.audio import load_audio
    from mtspeech.data.manifest import read_manifest
    from mtspeech.metrics import cer, wer

    torch.set_num_threads(args.threads)
    manifest = Path(args.manifest)
    if not manifest.is_file():
        raise SystemExit(f"manifest {manifest} not found (run recipes/synthetic/run.sh, or pass --manifest)")
    utts = [u for u in read_manifest(manifest) if u.speech and u.text]
    if args.limit:
        utts = utts[: args.limit]
    if not utts:
        raise SystemExit(f"{manifest}: no utterance has both `speech` segments and `text`")
    recs = load_recognizers(args)
    frame = SAMPLE_RATE * args.frame_ms // 1000
    rng = np.random.default_rng(args.seed)

    per_utt = []
    t0 = time.perf_counter()
    for u in utts:
        raw = load_audio(u.audio, SAMPLE_RATE)
        raw = np.asarray(raw.numpy() if hasattr(raw, "numpy") else raw, dtype=np.float32)
        wav = with_tail(raw, u.speech, args.tail_silence, args.tail, rng)
        speech_end = max(end for _, end in u.speech)
        row = {"id": u.id, "ref": u.text, "speech_end": round(speech_end, 4),
               "audio_end": round(len(wav) / SAMPLE_RATE, 4)}
        for mode, rec in recs.items():
            finals = stream_utterance(rec, wav, frame)
            res = {"hyp": " ".join(f.text for f, _ in finals), "finals": len(finals)}
            if finals:
                last, emitted = finals[-1]
                res.update(reason=last.reason, finalized_at=round(emitted, 4),
                           delay=round(emitted - speech_end, 4),
                           rule_delay=round(last.detected_at - speech_end, 4))
            row[mode] = res
        per_utt.append(row)
    elapsed = time.perf_counter() - t0

    modes = {}
    for mode in MODES:
        rows = [r[mode] for r in per_utt]
        done = [r for r in rows if "delay" in r]
        refs, hyps = [r["ref"] for r in per_utt], [r["hyp"] for r in rows]
        modes[mode] = {
            "utterances": len(rows),
            "finalized": len(done),
            "no_output": len(rows) - len(done),
            "endpointed": sum(r["reason"] != "eos" for r in done),
            "at_eos": sum(r["reason"] == "eos" for r in done),
            "delay_s": _stats([r["delay"] for r in done]),
            "rule_delay_s": _stats([r["rule_delay"] for r in done]),
            "wer": round(wer(refs, hyps).rate, 4),
            "cer": round(cer(refs, hyps).rate, 4),
        }

    paired = [r for r in per_utt if "delay" in r["vad"] and "delay" in r["blank"]]
    earlier = [r["blank"]["delay"] - r["vad"]["delay"] for r in paired]
    mean_vad = float(np.mean([r["vad"]["delay"] for r in paired])) if paired else None
    mean_blank = float(np.mean([r["blank"]["delay"] for r in paired])) if paired else None
    comparison = {
        "paired_utterances": len(paired),
        "baseline": "blank",
        "vad_earlier_by_s": _stats(earlier),  # blank delay - vad delay, per utterance
        "mean_delay_vad_s": None if mean_vad is None else round(mean_vad, 4),
        "mean_delay_blank_s": None if mean_blank is None else round(mean_blank, 4),
        "delay_ratio_vad_over_blank": (round(mean_vad / mean_blank, 4)
                                       if paired and mean_blank and mean_blank > 0 else None),
        "wer_diff_vad_minus_blank": round(modes["vad"]["wer"] - modes["blank"]["wer"], 4),
        "cer_diff_vad_minus_blank": round(modes["vad"]["cer"] - modes["blank"]["cer"], 4),
    }
    return {
        "benchmark": "endpoint_latency",
        "model": "random-tiny" if args.random_model else str(args.model),
        "manifest": str(manifest),
        "settings": {"frame_ms": args.frame_ms, "tail_silence_s": args.tail_silence, "tail": args.tail,
                     "chunk_frames": args.chunk_frames, "left_chunks": args.left_chunks,
                     "speech_threshold": args.speech_threshold, "rule1_s": args.rule1, "rule2_s": args.rule2,
                     "rule3_s": args.rule3, "threads": args.threads, "device": args.device},
        "elapsed_s": round(elapsed, 2),
        "modes": modes,
        "comparison": comparison,
        "per_utterance": per_utt,
    }


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def render(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"endpoint latency: {result['modes']['vad']['utterances']} utterances of {result['manifest']} "
        f"(model {result['model']}), {s['tail_silence_s']:g} s {s['tail']} tail, {s['frame_ms']} ms frames, "
        f"chunk {s['chunk_frames']} frames",
        f"rules (both modes): rule1 {s['rule1_s']:g} s, rule2 {s['rule2_s']:g} s, rule3 {s['rule3_s']:g} s; "
        f"VAD threshold {s['speech_threshold']:g}",
        "delay = finalization - true end of speech (s)",
        f"{'mode':<6} {'endpointed':>10} {'at eos':>6} {'mean':>7} {'p50':>7} {'p95':>7} {'rule mean':>9} "
        f"{'WER':>6} {'CER':>6}",
    ]
    for mode, m in result["modes"].items():
        d, r = m["delay_s"], m["rule_delay_s"]
        lines.append(f"{mode:<6} {m['endpointed']:>5}/{m['utterances']:<4} {m['at_eos']:>6} {_f(d['mean']):>7} "
                     f"{_f(d['p50']):>7} {_f(d['p95']):>7} {_f(r['mean']):>9} {_f(m['wer']):>6} {_f(m['cer']):>6}")
    c = result["comparison"]
    e = c["vad_earlier_by_s"]
    if c["paired_utterances"]:
        word = "earlier" if e["mean"] >= 0 else "LATER"
        lines.append(
            f"VAD finalizes {_f(abs(e['mean']))} s {word} than blank-only on average "
            f"(per-utterance blank - vad: mean {_f(e['mean'])} s, p50 {_f(e['p50'])} s, "
            f"paired over {c['paired_utterances']} utterances); mean delay ratio vad/blank = "
            f"{_f(c['delay_ratio_vad_over_blank'])} (baseline: blank-only endpointer, this run); "
            f"WER vad - blank = {c['wer_diff_vad_minus_blank']:+.4f}")
        lines.append("the comparison is at equal WER" if abs(c["wer_diff_vad_minus_blank"]) < 5e-4 else
                     "WER differs between the modes: the delays are NOT compared at equal WER")
    else:
        lines.append("no utterance was finalized in both modes: nothing to compare")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
