"""The streaming step as one graph: encoder chunk + task heads, caches as plain tensors.

`StreamingStepGraph` wraps a model's own `encoder.forward_chunk` (so every module inside
`model.encoder` is exported as it is, conditioning layers included) and the heads the
streaming recognizer reads. Its inputs and outputs are positional tensors whose names are
fixed here, once, for the exporter (`mtspeech.export.onnx`) and the runtime
(`mtspeech.export.runtime`) alike, and for the torch backend's traced step
(`mtspeech.streaming.traced`), which is why it lives in streaming/ and not in export/: the
default serving step must not run through the exporter's folder.

    inputs   feats (B, 4c+3, F) float, chunk_lens (B,) int64 real feature frames per row,
             keys, values (L, B, H, left, Dh), key_valid (B, left) bool, conv (L, B, D, K-1),
             frames_seen (B,) int64                     -- the EncoderCache, field by field
    outputs  lens (B,) int64 valid encoder frames, then one logits tensor per head
             (`asr_logits` (B, c, V), `phones_logits` (B, c, P) if the model has a phone head,
             `vad_logits` (B, c) if it has a VAD head, `speaker_logits` (B, c, D) if it has a
             speaker head: not logits but the frames that head pools, `encoder.SpeakerFrames`),
             then the new cache in input order
             (`new_keys`, ...).

A window shorter than 4c+3 (a stream's last) is right-padded by the caller and described by
`chunk_lens`; `forward_chunk` then updates each row's cache with its real frames only.
"""

from __future__ import annotations

from torch import nn

from mtspeech.encoders.cache import EncoderCache
from mtspeech.streaming.encoder import HEAD_ROLES, head_logits, head_tasks

CACHE_FIELDS = ("keys", "values", "key_valid", "conv", "frames_seen")
INPUT_NAMES = ("feats", "chunk_lens", *CACHE_FIELDS)
UPDATE_FIELDS = ("keys", "values", "conv", "frames_seen")  # FullChunkGraph's outputs after the heads


def output_names(roles: tuple[str, ...]) -> tuple[str, ...]:
    """Output names of a graph with heads `roles` (a subsequence of HEAD_ROLES)."""
    return ("lens", *(f"{r}_logits" for r in roles), *(f"new_{f}" for f in CACHE_FIELDS))


class StreamingStepGraph(nn.Module):
    """`model.encoder.forward_chunk` + every streaming head, with the cache as tensors.

    `chunk_frames` is fixed: `EncoderCache.chunk_frames` is a Python int, not a tensor, so one
    exported graph serves one chunk size (and one left context: its cache shape).
    Raises ValueError (naming the model's tasks) when the model has no ASR task.
    """

    def __init__(self, model: nn.Module, chunk_frames: int):
        super().__init__()
        self.encoder = model.encoder
        tasks = head_tasks(model)
        self.roles = tuple(r for r in HEAD_ROLES if r in tasks)
        self.heads = nn.ModuleDict({r: tasks[r] for r in self.roles})
        self.chunk_frames = chunk_frames

    def forward(self, feats, chunk_lens, keys, values, key_valid, conv, frames_seen):
        return self.step(feats, chunk_lens, keys, values, key_valid, conv, frames_seen)

    def step(self, feats, chunk_lens, keys, values, key_valid, conv, frames_seen):
        """The graph's outputs; `chunk_lens` None: every row a full window."""
        cache = EncoderCache(keys=keys, values=values, key_valid=key_valid, conv=conv,
                             frames_seen=frames_seen, chunk_frames=self.chunk_frames)
        out, new = self.encoder.forward_chunk(feats, cache, chunk_lens)
        logits = head_logits(self.heads, out, self.roles)
        return (out.lens, *(logits[r] for r in self.roles),
                new.keys, new.values, new.key_valid, new.conv, new.frames_seen)


class FullChunkGraph(StreamingStepGraph):
    """The same step for full windows only, without `chunk_lens`, returning the cache's update
    instead of the new cache: after the heads, the chunk's keys and values (L, B, H, c, Dh), the
    new conv history and frames_seen (`UPDATE_FIELDS`; every frame of a full window is valid).
    The caller writes them into its cache in place (`CachePool.apply`), so the graph never
    copies the whole left context out. What `mtspeech.streaming.traced` traces."""

    def forward(self, feats, keys, values, key_valid, conv, frames_seen):
        cache = EncoderCache(keys=keys, values=values, key_valid=key_valid, conv=conv,
                             frames_seen=frames_seen, chunk_frames=self.chunk_frames)
        out, update = self.encoder.forward_chunk_update(feats, cache, None)
        logits = head_logits(self.heads, out, self.roles)
        return (out.lens, *(logits[r] for r in self.roles), *(getattr(update, f) for f in UPDATE_FIELDS))
