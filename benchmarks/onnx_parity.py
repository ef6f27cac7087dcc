"""ONNX parity on real audio: greedy CER through the streaming recognizer, torch vs onnx fp32 vs int8.

Decodes every utterance of a manifest through `StreamingRecognizer` three times, changing only
the encoder step (PyTorch, the ONNX export, its int8 copy), and reports each one's CER against
the references, each ONNX variant's CER against the torch transcripts, and the int8 gate of
issue 12: int8 CER within 0.5 points absolute of fp32.

    python benchmarks/onnx_parity.py --model exp/synthetic/all/final.pt --manifest data/synthetic/test.jsonl
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import add_model_arguments, run_main  # noqa: E402

from mtspeech.data.geometry import SAMPLE_RATE  # noqa: E402

INT8_GATE_POINTS = 0.5


def add_arguments(ap: argparse.ArgumentParser) -> None:
    add_model_arguments(ap)
    ap.add_argument("--manifest", default="data/synthetic/test.jsonl")
    ap.add_argument("--onnx-dir", help="an existing `mtspeech export onnx --int8` folder of --model")
    ap.add_argument("--chunk-frames", type=int, default=8)
    ap.add_argument("--left-chunks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--out", help="write the results as JSON here")


def run(args) -> dict:
    import torch

    from mtspeech.data.audio import load_audio
    from mtspeech.data.manifest import read_manifest
    from mtspeech.export.onnx import export_onnx
    from mtspeech.export.parity import transcript_parity
    from mtspeech.export.quantize import quantize_int8
    from mtspeech.export.runtime import OnnxEncoderStep
    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.streaming import StreamingConfig

    torch.set_num_threads(args.threads)
    ckpt = args.model
    if args.random_model:
        from _tiny_model import build_random_checkpoint

        ckpt = str(build_random_checkpoint(Path(tempfile.mkdtemp()) / "tiny.pt"))
    cfg = StreamingConfig(chunk_frames=args.chunk_frames, left_chunks=args.left_chunks)
    # greedy: the parity of the encoder step, not of a search on top of it
    rec = load_recognizer(ckpt, DecodingConfig(decoder="greedy"), "torch-eager", streaming=cfg)
    onnx_dir = args.onnx_dir
    if onnx_dir is None:
        onnx_dir = tempfile.mkdtemp(prefix="onnx_parity_")
        export_onnx(rec.model, onnx_dir, args.chunk_frames, args.left_chunks, checkpoint=ckpt)
        quantize_int8(onnx_dir)
    utts = read_manifest(args.manifest)
    wavs = [load_audio(u.audio, SAMPLE_RATE).numpy() for u in utts]
    refs = [u.text for u in utts]
    audio_s = sum(len(w) for w in wavs) / SAMPLE_RATE
    out = {"benchmark": "onnx_parity", "model": str(ckpt), "manifest": args.manifest, "utterances": len(utts),
           "audio_s": round(audio_s, 2), "threads": args.threads, "backends": {}}
    t0 = time.perf_counter()
    for w in wavs:
        rec.transcribe(w)
    out["backends"]["torch"] = {"rtf": round((time.perf_counter() - t0) / audio_s, 4)}
    for name, int8 in (("onnx", False), ("onnx-int8", True)):
        other = rec.with_encoder_step(OnnxEncoderStep(onnx_dir, int8=int8, checkpoint=ckpt, threads=args.threads))
        t0 = time.perf_counter()
        p = transcript_parity(rec, other, wavs, refs)
        out["backends"]["torch"]["cer"] = round(p.cer_a, 4)
        # transcript_parity decodes with both: subtract the torch pass timed above
        secs = time.perf_counter() - t0 - out["backends"]["torch"]["rtf"] * audio_s
        out["backends"][name] = {"cer": round(p.cer_b, 4), "cer_vs_torch": round(p.cer_b_vs_a, 4),
                                 "identical_transcripts": p.identical, "rtf": round(secs / audio_s, 4)}
    gap = 100 * (out["backends"]["onnx-int8"]["cer"] - out["backends"]["onnx"]["cer"])
    out["int8_gate"] = {"points_above_fp32": round(gap, 2), "limit_points": INT8_GATE_POINTS,
                        "passes": gap <= INT8_GATE_POINTS}
    return out


def render(r: dict) -> str:
    lines = [f"{r['utterances']} utterances, {r['audio_s']} s of {r['manifest']}; {r['threads']} thread(s)",
             f"{'backend':<10} {'CER %':>6} {'CER vs torch %':>15} {'identical':>9} {'rtf':>7}"]
    for name, b in r["backends"].items():
        vs = "-" if "cer_vs_torch" not in b else f"{100 * b['cer_vs_torch']:.2f}"
        same = "-" if "identical_transcripts" not in b else f"{b['identical_transcripts']}/{r['utterances']}"
        lines.append(f"{name:<10} {100 * b['cer']:>6.2f} {vs:>15} {same:>9} {b['rtf']:>7.4f}")
    g = r["int8_gate"]
    lines.append(f"int8 gate (CER within {g['limit_points']} points of fp32): {g['points_above_fp32']:+.2f} points, "
                 + ("passes" if g["passes"] else "FAILS"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
