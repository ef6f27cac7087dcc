"""The torch encoder step as one TorchScript graph, for the server's full-chunk hot path.

Eager PyTorch runs a streaming step as some 300 small ops, and each one takes the GIL back from
the server's event loop and its other decode thread: at 128 concurrent streams on 2 cores the
eager step fell behind although, in-process, it costs the same per stream as onnxruntime
(benchmarks/README.md#server-load). A traced graph runs those ops in C++ with the GIL released
for the whole call.

`torch.jit.trace` records one path through Python control flow, so the graph
(`streaming.step_graph.FullChunkGraph`) is traced on a full window (4c+3 frames, every row full) and
used only for such steps; a stream's last, right-padded window (`chunk_lens`) takes the eager
path, which is the same model. At
construction the trace is checked against eager on a fresh and a warm cache at another batch
size; a model whose step the trace does not reproduce raises ValueError, and `traced_or_eager`
falls back to eager with a warning.
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterable

import torch
from torch import nn

from mtspeech.encoders.cache import CacheUpdate, EncoderCache
from mtspeech.streaming.step_graph import CACHE_FIELDS, UPDATE_FIELDS, FullChunkGraph
from mtspeech.streaming.encoder import ChunkOutput, TorchEncoderStep

log = logging.getLogger(__name__)


class TracedEncoderStep(TorchEncoderStep):
    """`TorchEncoderStep` whose full-window steps run a traced `streaming.step_graph.FullChunkGraph`."""

    name = "torch-traced"

    def __init__(self, model: nn.Module, chunk_frames: int, left_chunks: int) -> None:
        super().__init__(model, chunk_frames, left_chunks)
        feat_dim = model.encoder.cfg.input_dim
        self.window_frames, _ = model.geometry.chunk_window(chunk_frames)  # only full windows are traced
        self.device = next(model.parameters()).device
        graph = FullChunkGraph(model, chunk_frames).eval()
        self.graph_roles = graph.roles
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the frozen branches, on purpose
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace: still served by the pinned torch
            warnings.simplefilter("ignore", UserWarning)  # shape arithmetic on traced sizes
            first = self._inputs(2, feat_dim, seed=0)
            example = self._next_inputs(first, graph(*first))  # a warm cache
            self.graph = torch.jit.trace(graph, tuple(example), check_trace=False)
            self._check(graph, feat_dim)

    def _inputs(self, batch: int, feat_dim: int, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(batch, self.window_frames, feat_dim, generator=g).to(self.device)
        cache = self.init_cache(batch)
        return [feats, *(getattr(cache, f) for f in CACHE_FIELDS)]

    def _update(self, out: tuple) -> CacheUpdate:
        """The cache update a graph step returned (every frame of a full window valid)."""
        fields = dict(zip(UPDATE_FIELDS, out[1 + len(self.graph_roles):]))
        b, t = fields["keys"].shape[1], fields["keys"].shape[3]
        return CacheUpdate(**fields, valid=torch.ones(b, t, dtype=torch.bool, device=fields["keys"].device))

    def _next_inputs(self, inputs: list[torch.Tensor], out: tuple) -> list[torch.Tensor]:
        """The next step's inputs: new features, the cache after step `out`."""
        cache = EncoderCache(**dict(zip(CACHE_FIELDS, inputs[1:])), chunk_frames=self.chunk_frames)
        new = cache.updated(self._update(out))
        return [torch.randn_like(inputs[0]), *(getattr(new, f) for f in CACHE_FIELDS)]

    def _check(self, graph: nn.Module, feat_dim: int) -> None:
        """Traced = eager over more steps than the left context holds, at another batch size."""
        inputs = self._inputs(3, feat_dim, seed=1)
        for _ in range(self.left_chunks + 2):
            want, got = graph(*inputs), self.graph(*inputs)
            for w, g in zip(want, got):
                if w.shape != g.shape or not torch.allclose(w.float(), g.float(), atol=1e-4, rtol=1e-4):
                    raise ValueError("the traced streaming step differs from the eager one")
            inputs = self._next_inputs(inputs, want)

    def update(self, feats: torch.Tensor, cache: EncoderCache, roles: Iterable[str] = ("asr",),
               chunk_lens: torch.Tensor | None = None) -> tuple[ChunkOutput, CacheUpdate]:
        b, n, _ = feats.shape
        full = n == self.window_frames and (chunk_lens is None or bool((chunk_lens == n).all()))
        if not full or b == 0:
            return super().update(feats, cache, roles, chunk_lens)
        with torch.jit.optimized_execution(False):  # no re-specialisation per batch size
            out = self.graph(feats, *(getattr(cache, f) for f in CACHE_FIELDS))
        wanted = set(roles)
        logits = {r: out[1 + i] for i, r in enumerate(self.graph_roles) if r in wanted}
        return ChunkOutput(logits, out[0]), self._update(out)


def traced_or_eager(model: nn.Module, chunk_frames: int, left_chunks: int) -> TorchEncoderStep:
    """The traced step, or the eager one (with a warning saying why) if tracing fails."""
    try:
        return TracedEncoderStep(model, chunk_frames, left_chunks)
    except Exception as e:  # noqa: BLE001 - any tracing failure leaves the eager step, which is correct
        log.warning("torch backend: the streaming step could not be traced (%s); running it eagerly", e)
        return TorchEncoderStep(model, chunk_frames, left_chunks)
