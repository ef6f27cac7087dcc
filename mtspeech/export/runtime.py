"""The exported streaming step under onnxruntime: an `EncoderStep` for the recognizer.

    step = OnnxEncoderStep("exp/onnx", int8=False, checkpoint="final.pt")
    rec = StreamingRecognizer(model, tokenizer, config, encoder_step=step)
    # or, from a checkpoint: rec = mtspeech.decoding.loader.load_recognizer(ckpt, decoding, backend="onnx")

Only the encoder chunk and the heads run here; features and token decoding stay in the
recognizer. The cache is the same `EncoderCache` as PyTorch's (CPU tensors, shared with
numpy without copies), so the recognizer batches streams exactly as it does with the torch step.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from mtspeech.encoders.cache import EncoderCache
from mtspeech.streaming.step_graph import CACHE_FIELDS, INPUT_NAMES
from mtspeech.export.onnx import ExportInfo, export_onnx, file_sha256
from mtspeech.streaming.encoder import ChunkOutput

log = logging.getLogger(__name__)


class OnnxEncoderStep:
    """An exported graph (fp32, or its int8 copy) in an onnxruntime CPU session.

    `checkpoint`: if given, the export must have been made from this file (same SHA-256).
    `threads`: onnxruntime intra-op threads (default: torch's, so both backends use the same).
    """

    def __init__(self, export_dir: str | Path, int8: bool = False, checkpoint: str | Path | None = None,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        export_dir = Path(export_dir)
        info = ExportInfo.load(export_dir)
        if checkpoint is not None and info.checkpoint_sha256 not in (None, file_sha256(checkpoint)):
            raise ValueError(f"{export_dir} was exported from {info.checkpoint}, not from {checkpoint} "
                             "(different SHA-256): export this checkpoint again")
        if int8 and info.int8 is None:
            raise ValueError(f"{export_dir} has no int8 graph: run `mtspeech export onnx --int8` on it")
        path = export_dir / (info.int8 if int8 else info.graph)
        if not path.is_file():
            raise ValueError(f"{path} is missing from the export {export_dir}; export again")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = "onnx-int8" if int8 else "onnx"
        self.info, self.roles = info, tuple(info.roles)
        self.chunk_frames, self.left_chunks = info.chunk_frames, info.left_chunks
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        if set(shapes) != set(INPUT_NAMES):
            raise ValueError(f"{path}: inputs {sorted(shapes)} are not the streaming step's {list(INPUT_NAMES)}")
        self.window_frames, self.feat_dim = shapes["feats"][1], shapes["feats"][2]
        self._keys_shape, self._conv_shape = shapes["keys"], shapes["conv"]  # (L, B, H, left, Dh), (L, B, D, K-1)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def init_cache(self, batch: int) -> EncoderCache:
        """Empty state for `batch` streams, sized from the graph's own input shapes."""
        layers, _, heads, left, head_dim = self._keys_shape
        return EncoderCache.empty(num_layers=layers, batch=batch, heads=heads, head_dim=head_dim,
                                  dim=self._conv_shape[2], conv_history=self._conv_shape[3],
                                  chunk_frames=self.chunk_frames, left_chunks=self.left_chunks, device="cpu")

    def __call__(self, feats: torch.Tensor, cache: EncoderCache, roles: Iterable[str] = ("asr",),
                 chunk_lens: torch.Tensor | None = None) -> tuple[ChunkOutput, EncoderCache]:
        """feats (B, N <= 4c+3, F): shorter windows (streams' last) are right-padded and their
        real lengths (`chunk_lens`, default N for every row) passed to the graph, so it keeps
        one input shape."""
        b, n, _ = feats.shape
        if n > self.window_frames:
            raise ValueError(f"{n} feature frames; this graph takes at most {self.window_frames} (4c+3)")
        x = np.zeros((b, self.window_frames, self.feat_dim), dtype=np.float32)
        x[:, :n] = feats.detach().to("cpu", torch.float32).numpy()
        lens_in = np.full(b, n, dtype=np.int64) if chunk_lens is None else chunk_lens.cpu().numpy().astype(np.int64)
        feed = {"feats": x, "chunk_lens": lens_in}
        feed |= {f: getattr(cache, f).detach().cpu().numpy() for f in CACHE_FIELDS}
        out = dict(zip(self._outputs, self.session.run(None, feed)))
        lens = torch.from_numpy(out["lens"])
        frames = int(lens.max()) if b else 0  # rows past their own `lens` are padding
        logits = {r: torch.from_numpy(out[f"{r}_logits"][:, :frames]) for r in roles if r in self.roles}
        new = EncoderCache(**{f: torch.from_numpy(out[f"new_{f}"]) for f in CACHE_FIELDS},
                           chunk_frames=self.chunk_frames)
        return ChunkOutput(logits, lens), new


def onnx_step_for(model: nn.Module, checkpoint: str | Path, chunk_frames: int, left_chunks: int,
                  export_dir: str | Path | None = None, int8: bool = False) -> OnnxEncoderStep:
    """The ONNX step `mtspeech serve --backend onnx` runs: from `export_dir` (checked against
    `checkpoint`), or, without one, exported (and quantized, with `int8`) into a temporary
    folder now, which takes seconds to a minute."""
    if export_dir is not None:
        return OnnxEncoderStep(export_dir, int8=int8, checkpoint=checkpoint)
    from mtspeech.export.quantize import quantize_int8

    # The session holds the graph in memory once built, so the folder can go right after.
    with tempfile.TemporaryDirectory(prefix="mtspeech-onnx-") as tmp:
        log.info("exporting %s to ONNX (pass --onnx-dir to reuse an export)", checkpoint)
        export_onnx(model, tmp, chunk_frames, left_chunks, checkpoint)
        if int8:
            quantize_int8(tmp)
        return OnnxEncoderStep(tmp, int8=int8, checkpoint=checkpoint)
