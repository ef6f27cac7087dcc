"""Endpoint latency: how much earlier does the VAD head finalize than a CTC-blank-only endpointer?

Every utterance of a manifest (which must carry exact speech segments, field `speech`) is
streamed through the same model twice, locally (no server), with the same endpoint rules
(`mtspeech/streaming/endpoint.py`, sherpa-onnx style) and only the non-speech criterion changed:

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

  premature      a rule fired (rule2/rule3) before the true speech end: the endpointer
                 closed the utterance while the speaker was still to say something;
  cut in pause   (with --pauses) a premature endpoint detected inside the inserted pause.
  tail           (mode vad) the VAD head's streaming p(speech) after the true speech end:
                 the share of frames at or over the threshold, the longest non-speech run,
                 the number and longest of the speech runs; summarised for endpointed and
                 open items. Noise scored as speech there restarts rule 2's count.

WER/CER are of the concatenated finals against the reference text (corpus rates). The
comparison is paired over utterances both modes finalized; the baseline is the blank-only
endpointer measured in the same run: `ratio` = mean delay (vad) / mean delay (blank).

Noise: pass a noisy twin as `--manifest` (`test-snr10.jsonl`, ...) with `--tail background`:
the tail (and the pause) then loops the recording's own non-speech audio, i.e. the twin's
noise of its own kind and level, instead of white noise at its RMS.

Internal pauses (`--pauses MIN MAX`): utterances are taken two by two (seeded shuffle of the
usable ones) and joined as A up to the end of its last speech segment, a pause of MIN-MAX
seconds (uniform, seeded) filled as the tail is, then B from the start of its first segment;
the reference text is A's then B's, the segments A's and B's shifted. So the pause is
exactly the drawn length, and a rule that fires inside it cut a sentence in two.

    python benchmarks/endpoint_latency.py --model exp/synthetic/all/final.pt --limit 50 --out ep.json
    python benchmarks/endpoint_latency.py --model M --manifest data/synthetic/test-snr10.jsonl --tail background \
        --pauses 0.4 0.8
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

from mtspeech.decoding.config import DecodingConfig  # noqa: E402
from mtspeech.decoding.loader import load_recognizer  # noqa: E402
from mtspeech.streaming.endpoint import EndpointConfig  # noqa: E402
from mtspeech.streaming import SAMPLE_RATE, FinalEvent, StreamingConfig, StreamingRecognizer  # noqa: E402
from mtspeech.streaming.stream import SpeechActivityEvent  # noqa: E402

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
    ap.add_argument("--tail", choices=["noise", "zeros", "background"], default="noise",
                    help="noise: Gaussian at the utterance's own non-speech RMS; zeros: digital silence; "
                         "background: the recording's own non-speech audio, looped")
    ap.add_argument("--pauses", type=float, nargs=2, metavar=("MIN_S", "MAX_S"),
                    help="join utterances two by two with a pause of MIN-MAX seconds (seeded)")
    ap.add_argument("--chunk-frames", type=int, default=StreamingConfig.chunk_frames)
    ap.add_argument("--left-chunks", type=int, default=StreamingConfig.left_chunks)
    ap.add_argument("--speech-threshold", type=float, default=d.speech_threshold, help="VAD mode only")
    ap.add_argument("--rule1", type=float, default=d.rule1_trailing_silence_s, help="seconds (both modes)")
    ap.add_argument("--rule2", type=float, default=d.rule2_trailing_silence_s, help="seconds (both modes)")
    ap.add_argument("--min-speech", type=float, default=d.min_speech_s,
                    help="seconds: a shorter speech run inside trailing non-speech holds its count, not restarts it "
                         "(mode vad only)")
    ap.add_argument("--rule3", type=float, default=d.rule3_max_utterance_s, help="seconds (both modes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0, help="tail noise, pairing and pause lengths")


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


def _nonspeech(wav: np.ndarray, speech: list, margin_s: float = 0.05) -> np.ndarray:
    """The samples of `wav` at least `margin_s` away from every speech segment."""
    mask = np.ones(len(wav), dtype=bool)
    for start, end in speech:
        mask[max(0, int((start - margin_s) * SAMPLE_RATE)) : int(math.ceil((end + margin_s) * SAMPLE_RATE))] = False
    return wav[mask]


def filler(wav: np.ndarray, speech: list, n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of non-speech for a tail or a pause: zeros, Gaussian noise at the recording's
    non-speech RMS, or (`background`) its own non-speech audio looped (Gaussian when it has
    under 0.1 s of it)."""
    if kind == "zeros" or n <= 0:
        return np.zeros(max(n, 0), dtype=np.float32)
    rest = _nonspeech(wav, speech)
    if kind == "background" and len(rest) >= SAMPLE_RATE // 10:
        start = int(rng.integers(len(rest)))
        return np.resize(np.roll(rest, -start), n).astype(np.float32)
    return (rng.standard_normal(n) * _nonspeech_rms(wav, speech)).astype(np.float32)


def with_tail(wav: np.ndarray, speech: list, seconds: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`wav` followed by `seconds` of non-speech (`filler`)."""
    n = int(round(seconds * SAMPLE_RATE))
    if n <= 0:
        return wav
    return np.concatenate([wav.astype(np.float32), filler(wav, speech, n, kind, rng)])


def join_with_pause(a: np.ndarray, a_speech: list, b: np.ndarray, b_speech: list, pause_s: float,
                    kind: str, rng: np.random.Generator) -> tuple[np.ndarray, list, tuple[float, float]]:
    """A up to its last speech end, `pause_s` of `filler` (from A), B from its first speech start
    → (audio, speech segments in seconds, (pause start, pause end) in seconds)."""
    a_end = int(math.ceil(max(e for _, e in a_speech) * SAMPLE_RATE))
    b_start = int(min(s for s, _ in b_speech) * SAMPLE_RATE)
    gap = filler(a, a_speech, int(round(pause_s * SAMPLE_RATE)), kind, rng)
    wav = np.concatenate([a[:a_end].astype(np.float32), gap, b[b_start:].astype(np.float32)])
    shift = (a_end + len(gap) - b_start) / SAMPLE_RATE
    speech = [list(seg) for seg in a_speech] + [[s + shift, e + shift] for s, e in b_speech]
    return wav, speech, (a_end / SAMPLE_RATE, (a_end + len(gap)) / SAMPLE_RATE)


def stream_utterance(rec: StreamingRecognizer, wav: np.ndarray, frame: int,
                     activity: list | None = None) -> list[tuple[FinalEvent, float]]:
    """Feed `wav` frame by frame, decoding whenever a chunk is ready; (final, stream time it
    appeared). `activity`: a list to extend with (frame start s, p(speech)) of every frame."""
    s = rec.new_stream(SAMPLE_RATE, endpointing=True, interim=False, speech_activity=activity is not None)
    finals = []

    def collect(now: float) -> None:
        for e in rec.events(s):
            if isinstance(e, FinalEvent):
                finals.append((e, now))
            elif isinstance(e, SpeechActivityEvent) and activity is not None:
                activity.extend((e.start + k * e.frame_shift_s, p) for k, p in enumerate(e.speech))

    for i in range(0, len(wav), frame):
        rec.accept(s, wav[i : i + frame])
        while rec.ready(s):
            rec.step([s])
        collect(min(i + frame, len(wav)) / SAMPLE_RATE)
    rec.finish(s)
    collect(len(wav) / SAMPLE_RATE)
    return finals


def tail_activity(activity: list, speech_end: float, threshold: float, frame_s: float) -> dict:
    """What the VAD head heard after the last word: the share of tail frames it scored as
    speech, the longest run of non-speech, and the runs of speech (count and longest), in s.
    Why an utterance was not endpointed: noise scored as speech restarts rule 2's count."""
    tail = [p >= threshold for t, p in activity if t >= speech_end]
    runs: dict[bool, list[int]] = {True: [], False: []}
    for k, v in enumerate(tail):
        if k and tail[k - 1] == v:
            runs[v][-1] += 1
        else:
            runs[v].append(1)
    return {"frames": len(tail), "speech_frac": round(float(np.mean(tail)), 4) if tail else 0.0,
            "longest_nonspeech_s": round(max(runs[False], default=0) * frame_s, 3),
            "speech_runs": len(runs[True]), "longest_speech_run_s": round(max(runs[True], default=0) * frame_s, 3)}


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
                              rule3_max_utterance_s=args.rule3, min_speech_s=args.min_speech)
    cfg = StreamingConfig(chunk_frames=args.chunk_frames, left_chunks=args.left_chunks, endpoint=endpoint)
    vad = load_recognizer(ckpt, DecodingConfig(decoder="greedy"), "torch-eager", streaming=cfg, device=args.device)
    if tmp is not None:
        tmp.cleanup()
    if vad.vad is None:
        raise SystemExit(f"{ckpt}: the model has no VAD head; there is nothing to compare with blank-only endpointing")
    blank_cfg = replace(cfg, endpoint=replace(endpoint, mode="blank"))
    blank = StreamingRecognizer(vad.model, vad.tokenizer, blank_cfg, args.device)
    return {"vad": vad, "blank": blank}


# ----------------------------------------------------------------------------- the benchmark


def _audio(u) -> np.ndarray:
    from mtspeech.data.audio import load_audio

    raw = load_audio(u.audio, SAMPLE_RATE)
    return np.asarray(raw.numpy() if hasattr(raw, "numpy") else raw, dtype=np.float32)


def build_items(utts: list, args, rng: np.random.Generator) -> list[dict]:
    """What is streamed: each utterance with its tail, or (--pauses) seeded pairs joined by a pause.
    Items: id, ref, wav (S,), speech [[s, e]...], pause (start_s, end_s) or None."""
    items = []
    if args.pauses is None:
        for u in utts:
            items.append({"id": u.id, "ref": u.text, "wav": _audio(u), "speech": u.speech, "pause": None})
    else:
        low, high = args.pauses
        if not 0 <= low <= high:
            raise SystemExit(f"--pauses {low} {high}: expected 0 <= MIN <= MAX")
        order = rng.permutation(len(utts))
        for i in range(0, len(order) - 1, 2):
            a, b = utts[order[i]], utts[order[i + 1]]
            wav, speech, pause = join_with_pause(_audio(a), a.speech, _audio(b), b.speech,
                                                 float(rng.uniform(low, high)), args.tail, rng)
            items.append({"id": f"{a.id}+{b.id}", "ref": f"{a.text} {b.text}", "wav": wav, "speech": speech,
                          "pause": pause})
    for it in items:
        it["wav"] = with_tail(it["wav"], it["speech"], args.tail_silence, args.tail, rng)
    return items


def run(args) -> dict:
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
    items = build_items(utts, args, rng)
    if not items:
        raise SystemExit(f"{manifest}: --pauses needs at least two usable utterances")

    per_utt = []
    t0 = time.perf_counter()
    for it in items:
        wav = it["wav"]
        speech_end = max(end for _, end in it["speech"])
        row = {"id": it["id"], "ref": it["ref"], "speech_end": round(speech_end, 4),
               "audio_end": round(len(wav) / SAMPLE_RATE, 4)}
        if it["pause"] is not None:
            row["pause"] = [round(t, 4) for t in it["pause"]]
        for mode, rec in recs.items():
            activity = [] if mode == "vad" else None
            finals = stream_utterance(rec, wav, frame, activity)
            cuts = [f.detected_at for f, _ in finals if f.reason != "eos" and f.detected_at < speech_end]
            res = {"hyp": " ".join(f.text for f, _ in finals), "finals": len(finals),
                   "premature_at": [round(t, 4) for t in cuts]}
            if it["pause"] is not None:
                res["cut_in_pause"] = any(it["pause"][0] <= t <= it["pause"][1] for t in cuts)
            if finals:
                last, emitted = finals[-1]
                res.update(reason=last.reason, finalized_at=round(emitted, 4),
                           delay=round(emitted - speech_end, 4),
                           rule_delay=round(last.detected_at - speech_end, 4))
            if activity is not None:
                res["tail"] = tail_activity(activity, speech_end, args.speech_threshold, rec.frame_shift_s)
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
            "premature": sum(bool(r["premature_at"]) for r in rows),
            "cut_in_pause": sum(r.get("cut_in_pause", False) for r in rows) if args.pauses else None,
            "delay_s": _stats([r["delay"] for r in done]),
            "rule_delay_s": _stats([r["rule_delay"] for r in done]),
            "wer": round(wer(refs, hyps).rate, 4),
            "cer": round(cer(refs, hyps).rate, 4),
        }

    # Why the VAD head leaves an utterance open: how much of the tail it scored as speech.
    tails = {k: [r["vad"]["tail"] for r in per_utt if "tail" in r["vad"] and (r["vad"].get("reason") == "eos") == open_]
             for k, open_ in (("endpointed", False), ("open", True))}
    modes["vad"]["tail"] = {k: {"items": len(v), "speech_frac": _stats([t["speech_frac"] for t in v]),
                                "longest_nonspeech_s": _stats([t["longest_nonspeech_s"] for t in v]),
                                "longest_speech_run_s": _stats([t["longest_speech_run_s"] for t in v])}
                            for k, v in tails.items()}
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
                     "pauses_s": args.pauses, "seed": args.seed,
                     "chunk_frames": args.chunk_frames, "left_chunks": args.left_chunks,
                     "speech_threshold": args.speech_threshold, "rule1_s": args.rule1, "rule2_s": args.rule2,
                     "rule3_s": args.rule3, "min_speech_s": args.min_speech, "threads": args.threads, "device": args.device},
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
        f"chunk {s['chunk_frames']} frames"
        + (f"; joined two by two with {s['pauses_s'][0]:g}-{s['pauses_s'][1]:g} s pauses" if s["pauses_s"] else ""),
        f"rules (both modes): rule1 {s['rule1_s']:g} s, rule2 {s['rule2_s']:g} s, rule3 {s['rule3_s']:g} s; "
        f"VAD threshold {s['speech_threshold']:g}; min speech {s.get('min_speech_s', 0):g} s",
        "delay = finalization - true end of speech (s); premature = a rule fired before it",
        f"{'mode':<6} {'endpointed':>10} {'at eos':>6} {'premature':>9} {'in pause':>8} {'mean':>7} {'p50':>7} "
        f"{'p95':>7} {'rule mean':>9} {'WER':>6} {'CER':>6}",
    ]
    for mode, m in result["modes"].items():
        d, r = m["delay_s"], m["rule_delay_s"]
        lines.append(f"{mode:<6} {m['endpointed']:>5}/{m['utterances']:<4} {m['at_eos']:>6} {m['premature']:>9} "
                     f"{_f(m['cut_in_pause'], '{}'):>8} {_f(d['mean']):>7} {_f(d['p50']):>7} {_f(d['p95']):>7} "
                     f"{_f(r['mean']):>9} {_f(m['wer']):>6} {_f(m['cer']):>6}")
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
    for kind, t in result["modes"]["vad"].get("tail", {}).items():
        if t["items"]:
            lines.append(f"VAD head after the last word, {kind} items ({t['items']}): mean share of frames scored "
                         f"speech {_f(t['speech_frac']['mean'])}, longest non-speech run "
                         f"{_f(t['longest_nonspeech_s']['mean'])} s, longest speech run "
                         f"{_f(t['longest_speech_run_s']['mean'])} s (means)")
    pauses = f"{s['pauses_s'][0]:g}-{s['pauses_s'][1]:g} s" if s["pauses_s"] else "-"
    lines += ["", "| manifest | pauses | mode | items | endpointed | premature | cut in pause | delay mean (s) | "
              "delay p95 (s) | WER | CER |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, m in result["modes"].items():
        lines.append(f"| {Path(result['manifest']).stem} | {pauses} | {mode} | {m['utterances']} | {m['endpointed']} | "
                     f"{m['premature']} | {_f(m['cut_in_pause'], '{}')} | {_f(m['delay_s']['mean'])} | "
                     f"{_f(m['delay_s']['p95'])} | {_f(m['wer'])} | {_f(m['cer'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
