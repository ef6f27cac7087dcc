"""EncoderCache: the streaming state of a chunked encoder, typed, fixed-size and batched.

Every tensor has the batch on a fixed axis (`BATCH_DIM`) and a size that never changes while
a stream runs, so caches of streams at different progress are rows of one batch
(`mtspeech.streaming.encoder.CachePool`: `take` the rows of a step, write its `CacheUpdate`
back). Attention keys are stored *after* rotary embedding (at their absolute positions), so
they stay valid as later chunks arrive; `frames_seen` gives each row the position of its next
frame.

The left context is a ring: the frame at absolute position p lives in slot p mod left_frames.
Attention does not care where a key sits (each carries its own position, and the mask says
which slots hold one), so a step only writes its own t new frames over the oldest ones,
instead of shifting the whole left context by t and writing every slot back: a server step
moved each stream's left context four times (gather, concatenate, stack, scatter), which was
most of the streaming encoder's time; now it moves it once, for the concatenation attention
needs (docs/benchmarks.md, "Server load").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class EncoderCache:
    """Streaming state for `L` layers, batch `B`.

    `L` counts every block that runs: the encoder's layers, or with task towers
    (`towers.py`) the trunk's blocks then each tower's, tower by tower (`encoder.cache_layers`).

    keys, values: (L, B, H, left_frames, Dh) rotated keys / values of the left context, the
        frame at position p in slot p mod left_frames; `left_frames = left_chunks * chunk_frames`.
    key_valid: (B, left_frames) bool, False where a slot holds no frame yet.
    conv: (L, B, D, kernel-1) input history of each layer's causal depthwise convolution
        (size 0 for encoders without one).
    frames_seen: (B,) int64 encoder frames already produced (rotary position of the next one).
    chunk_frames: encoder frames per chunk this cache was built for (the same for every row).
    """

    keys: torch.Tensor
    values: torch.Tensor
    key_valid: torch.Tensor
    conv: torch.Tensor
    frames_seen: torch.Tensor
    chunk_frames: int

    def __post_init__(self):
        b = self.frames_seen.shape[0]
        if self.keys.shape != self.values.shape:
            raise ValueError(f"keys {tuple(self.keys.shape)} and values {tuple(self.values.shape)} differ")
        if self.keys.shape[1] != b or self.conv.shape[1] != b or self.key_valid.shape[0] != b:
            raise ValueError("EncoderCache tensors disagree on the batch size")
        if self.key_valid.shape[1] != self.keys.shape[3]:
            raise ValueError("key_valid and keys disagree on left_frames")

    @classmethod
    def empty(
        cls,
        *,
        num_layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        dim: int,
        conv_history: int,
        chunk_frames: int,
        left_chunks: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "EncoderCache":
        """The state before any audio: no valid keys, zero convolution history, position 0."""
        left = left_chunks * chunk_frames
        return cls(
            keys=torch.zeros(num_layers, batch, heads, left, head_dim, device=device, dtype=dtype),
            values=torch.zeros(num_layers, batch, heads, left, head_dim, device=device, dtype=dtype),
            key_valid=torch.zeros(batch, left, dtype=torch.bool, device=device),
            conv=torch.zeros(num_layers, batch, dim, conv_history, device=device, dtype=dtype),
            frames_seen=torch.zeros(batch, dtype=torch.long, device=device),
            chunk_frames=chunk_frames,
        )

    @property
    def batch_size(self) -> int:
        return self.frames_seen.shape[0]

    @property
    def left_frames(self) -> int:
        return self.keys.shape[3]

    @staticmethod
    def stack(caches: list["EncoderCache"]) -> "EncoderCache":
        """Concatenate caches along the batch (rows keep their own progress)."""
        if not caches:
            raise ValueError("EncoderCache.stack needs at least one cache")
        first = caches[0]
        for c in caches[1:]:
            if (c.chunk_frames != first.chunk_frames or _geometry(c) != _geometry(first)):
                raise ValueError(
                    "cannot stack EncoderCaches built for different geometry "
                    f"(chunk_frames {c.chunk_frames} vs {first.chunk_frames}, "
                    f"keys {tuple(c.keys.shape)} vs {tuple(first.keys.shape)})"
                )
        return EncoderCache(
            keys=torch.cat([c.keys for c in caches], dim=1),
            values=torch.cat([c.values for c in caches], dim=1),
            key_valid=torch.cat([c.key_valid for c in caches], dim=0),
            conv=torch.cat([c.conv for c in caches], dim=1),
            frames_seen=torch.cat([c.frames_seen for c in caches], dim=0),
            chunk_frames=first.chunk_frames,
        )

    def unstack(self) -> list["EncoderCache"]:
        """Split into one batch-of-1 cache per row, each owning its storage.

        Rows are copied, not viewed: a view would keep the whole batch's tensors alive for as
        long as any one stream of the batch sits idle.
        """
        return [
            EncoderCache(
                keys=_own(self.keys[:, i : i + 1]),
                values=_own(self.values[:, i : i + 1]),
                key_valid=_own(self.key_valid[i : i + 1]),
                conv=_own(self.conv[:, i : i + 1]),
                frames_seen=_own(self.frames_seen[i : i + 1]),
                chunk_frames=self.chunk_frames,
            )
            for i in range(self.batch_size)
        ]

    def take(self, rows: torch.Tensor) -> "EncoderCache":
        """A new cache of the given rows (B',) int64, in that order (one copy per tensor)."""
        return EncoderCache(**{f: getattr(self, f).index_select(d, rows) for f, d in BATCH_DIM.items()},
                            chunk_frames=self.chunk_frames)

    def put_(self, rows: torch.Tensor, other: "EncoderCache") -> None:
        """Write `other`'s rows into rows `rows` (B',) of this cache, in place."""
        for f, d in BATCH_DIM.items():
            getattr(self, f).index_copy_(d, rows, getattr(other, f))

    def slots(self, frames: int) -> torch.Tensor:
        """(B, frames) int64: the ring slots of each row's next `frames` frames."""
        return ring_slots(self.frames_seen, frames, self.left_frames)

    def updated(self, update: "CacheUpdate") -> "EncoderCache":
        """The cache after a chunk: `update`'s valid frames written over the oldest slots (a new
        cache; gather / where / scatter, so it exports to ONNX)."""
        keys, values, key_valid = self.keys, self.values, self.key_valid
        t = update.valid.shape[1]
        if self.left_frames and t:
            slots = self.slots(t)  # (B, t); distinct per row, since t <= chunk_frames <= left_frames
            idx = slots[None, :, None, :, None].expand(*update.keys.shape)
            valid = update.valid[None, :, None, :, None]
            keys = keys.scatter(3, idx, torch.where(valid, update.keys, keys.gather(3, idx)))
            values = values.scatter(3, idx, torch.where(valid, update.values, values.gather(3, idx)))
            key_valid = key_valid.scatter(1, slots, key_valid.gather(1, slots) | update.valid)
        return EncoderCache(keys=keys, values=values, key_valid=key_valid, conv=update.conv,
                            frames_seen=update.frames_seen, chunk_frames=self.chunk_frames)

    def to(self, device: torch.device | str) -> "EncoderCache":
        """The same cache on another device."""
        return dataclasses.replace(
            self,
            keys=self.keys.to(device),
            values=self.values.to(device),
            key_valid=self.key_valid.to(device),
            conv=self.conv.to(device),
            frames_seen=self.frames_seen.to(device),
        )


@dataclass(frozen=True, eq=False)
class CacheUpdate:
    """What one chunk adds to an `EncoderCache` of batch B (`forward_chunk_update`).

    keys, values: (L, B, H, t, Dh) the chunk's rotated keys / values, frame j of row b at
        position `frames_seen[b] + j` of the cache it was computed from;
    valid: (B, t) bool, False for a right-padded row's frames past its end (not written);
    conv: (L, B, D, kernel-1) the new convolution history (replaces the old one);
    frames_seen: (B,) int64 the new positions.
    """

    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    conv: torch.Tensor
    frames_seen: torch.Tensor


def ring_slots(frames_seen: torch.Tensor, frames: int, left_frames: int) -> torch.Tensor:
    """(B, frames) int64: where the next `frames` frames of rows that have seen `frames_seen` (B,)
    go in a ring of `left_frames` slots (the frame at position p in slot p mod left_frames)."""
    ahead = torch.arange(frames, device=frames_seen.device)
    return (frames_seen.unsqueeze(1) + ahead) % left_frames


# The batch axis of each tensor field.
BATCH_DIM = {"keys": 1, "values": 1, "key_valid": 0, "conv": 1, "frames_seen": 0}


def _own(row: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `row` in storage of its own size."""
    return row.clone(memory_format=torch.contiguous_format)


def _geometry(cache: EncoderCache) -> tuple:
    """Every size but the batch: what must agree for caches to stack."""
    k, conv = cache.keys.shape, cache.conv.shape
    return (k[0], k[2], k[3], k[4], conv[0], conv[2], conv[3], cache.keys.dtype)
