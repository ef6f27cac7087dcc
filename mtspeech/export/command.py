"""`mtspeech export onnx --model final.pt --out DIR [--int8]`: the streaming step as ONNX.

Writes DIR/encoder_step.onnx (+ its .data weights), DIR/export.json, and with `--int8` the
dynamically quantized DIR/encoder_step.int8.onnx; then runs each graph next to PyTorch over a
few seconds of noise and prints the largest logit difference per head (a smoke check; the
accuracy check on real audio is `benchmarks/onnx_parity.py`).
"""

from __future__ import annotations

import argparse
import logging

import torch

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mtspeech.streaming import StreamingConfig

    formats = parser.add_subparsers(dest="format", required=True)
    p = formats.add_parser("onnx", help="encoder chunk + heads with explicit caches, for onnxruntime")
    p.add_argument("--model", required=True, help="checkpoint (from `mtspeech train`)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--int8", action="store_true", help="also write a dynamically quantized int8 copy")
    p.add_argument("--chunk-frames", type=int, default=StreamingConfig.chunk_frames,
                   help="encoder frames (40 ms) per chunk; the server must use the same")
    p.add_argument("--left-chunks", type=int, default=StreamingConfig.left_chunks,
                   help="chunks of left context in the cache; the server must use the same")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mtspeech.checkpoint import load_model
    from mtspeech.export.onnx import export_onnx
    from mtspeech.export.parity import logit_parity
    from mtspeech.export.quantize import quantize_int8
    from mtspeech.export.runtime import OnnxEncoderStep
    from mtspeech.streaming.encoder import TorchEncoderStep

    if not Path(args.model).is_file():
        log.error("mtspeech export: checkpoint %s does not exist", args.model)
        return 2
    model, _exp, _labels = load_model(args.model)
    try:
        info = export_onnx(model, args.out, args.chunk_frames, args.left_chunks, checkpoint=args.model)
    except ValueError as e:
        log.error("mtspeech export: %s", e)
        return 2
    if args.int8:
        info = quantize_int8(args.out)
    torch.manual_seed(0)
    with torch.inference_mode():
        wav = 0.1 * torch.randn(1, 3 * model.geometry.sample_rate)
        feats, _ = model.features(wav, torch.tensor([wav.shape[1]]))
    reference = TorchEncoderStep(model, args.chunk_frames, args.left_chunks)
    print(f"exported {Path(args.out) / info.graph} with the {info.exporter} exporter; heads: {', '.join(info.roles)}")
    for int8 in (False, True) if args.int8 else (False,):
        diff = logit_parity(reference, OnnxEncoderStep(args.out, int8=int8), [feats[0]])
        name = "int8" if int8 else "fp32"
        print(f"{name}: max |logit difference| vs PyTorch over 3 s of noise: "
              + ", ".join(f"{r} {d:.2e}" for r, d in diff.items()))
    return 0
