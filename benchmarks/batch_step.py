"""Decoding step time per batch size: what cross-stream batching buys, per encoder backend.

Builds the server's `StreamingRecognizer` (greedy, the server's chunking) for a checkpoint
and times `step` on B streams at once, for each B of `--batch-sizes`, each stream fed a
test utterance (cycled) long enough for every timed step. A step is the whole per-chunk work
of the server's decoding thread: features of the new audio, the encoder chunk and heads with
the streams' caches stacked, the caches split back, greedy decoding and endpointing. Time is
the median over `--steps` steps after 2 warm-up steps, on `--threads` intra-op threads (1: a
server decode thread; `mtspeech serve --intra-op-threads`).

Reported per B: ms per step, ms per stream-chunk, streams one step-thread keeps up with in
real time (chunk seconds * B / step seconds), and that throughput relative to B = 1 measured
in the same run (the baseline).

    python benchmarks/batch_step.py --model exp/synthetic/all/final.pt --backend torch onnx onnx-int8
    python benchmarks/batch_step.py --random-model --batch-sizes 1 4 --steps 3    # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import add_model_arguments, run_main  # noqa: E402

from mtspeech.data.geometry import SAMPLE_RATE, FrameGeometry  # noqa: E402

BACKENDS = ("torch", "torch-traced", "onnx", "onnx-int8")  # torch: eager (the server's torch-eager)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    add_model_arguments(ap)
    ap.add_argument("--manifest", default="data/synthetic/test.jsonl", help="test utterances (else a tone)")
    ap.add_argument("--utterances", type=int, default=8, help="how many manifest utterances to cycle through")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32, 64, 128])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per batch size")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (torch and onnxruntime)")
    ap.add_argument("--backend", nargs="+", choices=BACKENDS, default=["torch"])
    ap.add_argument("--chunk-frames", type=int, default=8)
    ap.add_argument("--left-chunks", type=int, default=16)
    ap.add_argument("--out", help="write the results as JSON here")


def _audio(args, seconds: float) -> list[np.ndarray]:
    """Test utterances, each tiled to at least `seconds`."""
    from server_load import load_test_audio

    args.audio = None
    samples, _ = load_test_audio(args)
    return [np.tile(w, int(np.ceil(seconds * SAMPLE_RATE / len(w)))) for _, w in samples]


def _recognizer(ckpt: str, backend: str, onnx_dir: str | None, args):
    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.streaming import StreamingConfig

    rec = load_recognizer(ckpt, DecodingConfig(decoder="greedy"), "torch-eager",
                          streaming=StreamingConfig(args.chunk_frames, args.left_chunks))
    if backend == "torch-traced":
        from mtspeech.streaming.traced import TracedEncoderStep

        rec = rec.with_encoder_step(TracedEncoderStep(rec.model, args.chunk_frames, args.left_chunks))
    elif backend != "torch":
        from mtspeech.export.runtime import OnnxEncoderStep

        rec = rec.with_encoder_step(OnnxEncoderStep(onnx_dir, int8=backend == "onnx-int8", threads=args.threads))
    return rec


def time_steps(rec, wavs: list[np.ndarray], batch: int, steps: int) -> float:
    """Median seconds of one `step` of `batch` streams."""
    streams = [rec.new_stream() for _ in range(batch)]
    for i, s in enumerate(streams):
        rec.accept(s, wavs[i % len(wavs)])
    times = []
    for k in range(steps + 2):
        t0 = time.perf_counter()
        rec.step(streams)
        if k >= 2:
            times.append(time.perf_counter() - t0)
        for s in streams:
            rec.events(s)
    return statistics.median(times)


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    ckpt, tmp = args.model, tempfile.TemporaryDirectory(prefix="mtspeech_bench_")
    try:
        if args.random_model:
            from _tiny_model import build_random_checkpoint

            ckpt = str(build_random_checkpoint(Path(tmp.name) / "tiny_random.pt"))
        chunk_s = args.chunk_frames * FrameGeometry().frame_shift_s
        wavs = _audio(args, (args.steps + 3) * chunk_s + 1.0)
        onnx_dir = None
        if any(b.startswith("onnx") for b in args.backend):
            from server_load import _export_onnx

            onnx_dir = _export_onnx(ckpt, tmp.name, args)
        results = {}
        for backend in dict.fromkeys(args.backend):
            rec = _recognizer(ckpt, backend, onnx_dir, args)
            rows = []
            for b in args.batch_sizes:
                sec = time_steps(rec, wavs, b, args.steps)
                rows.append({"batch": b, "step_ms": round(sec * 1e3, 2), "ms_per_stream": round(sec * 1e3 / b, 3),
                             "realtime_streams": round(chunk_s * b / sec, 1)})
                print(f"[{backend}] B={b}: {sec * 1e3:.1f} ms", file=sys.stderr, flush=True)
            base = rows[0]["realtime_streams"]
            for r in rows:
                r["vs_first"] = round(r["realtime_streams"] / base, 2)
            results[backend] = rows
    finally:
        tmp.cleanup()
    return {"benchmark": "batch_step", "model": "random-tiny" if args.random_model else str(args.model),
            "settings": {k: getattr(args, k) for k in ("threads", "steps", "chunk_frames", "left_chunks", "utterances")},
            "baseline": f"B={args.batch_sizes[0]}, same run", "backends": results}


def render(result: dict) -> str:
    s = result["settings"]
    lines = [f"decoding step per batch size; {s['threads']} intra-op thread(s), chunk {s['chunk_frames']} frames, "
             f"left {s['left_chunks']} chunks, median of {s['steps']} steps",
             f"{'backend':10s} {'B':>4s} {'ms/step':>8s} {'ms/stream':>10s} {'RT streams':>11s} {'vs B=first':>11s}"]
    for backend, rows in result["backends"].items():
        for r in rows:
            lines.append(f"{backend:10s} {r['batch']:4d} {r['step_ms']:8.1f} {r['ms_per_stream']:10.2f} "
                         f"{r['realtime_streams']:11.1f} {r['vs_first']:10.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
