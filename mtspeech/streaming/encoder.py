"""The encoder step of the streaming recognizer: encoder chunk + heads, behind one small seam.

The recognizer (`mtspeech/streaming/recognizer.py`) owns features, streams and endpointing; the token
decoders (`mtspeech/streaming/decoders.py`) turn log-probs into words. Between them sits the
encoder step, split off as torchaudio's streaming bundles split `model.infer` from the
feature extractor and the token processor, so another runtime can replace it alone:

    step = TorchEncoderStep(model, chunk_frames=8, left_chunks=16)   # or export.runtime.OnnxEncoderStep
    cache = step.init_cache(batch=1)                                  # or rows of a CachePool
    out, cache = step(feats, cache, roles=("asr", "vad"))             # feats (B, N <= 4c+3, F)
    out.logits["asr"]  # (B, c', V) raw logits; "phones" (B, c', P); "vad" (B, c') speech logits
    out.logits["speaker"]  # (B, c', D) the frames the speaker head pools (not logits, see below)

Streaming heads: `asr` (the model's main task, a transcript head, required), `phones` (the task
whose role is `Role.PHONES`), `vad` (the task whose role is `Role.SPEECH_ACTIVITY`) and `speaker`
(the task whose role is `Role.SPEAKER_EMBEDDING`), each read from its own encoder layer (or
learned layer mix) by `task_input`, the one rule the model and evaluation use too. The speaker
head pools over more than a chunk, so its streaming output is its input frames (`SpeakerFrames`);
`mtspeech/streaming/speakers.py` pools windows of them. Role-less tasks do not stream.
The head names are those of the exported graph's outputs (`asr_logits`, ...), so they stay.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from mtspeech.encoders import EncoderOutput
from mtspeech.encoders.cache import BATCH_DIM, CacheUpdate, EncoderCache, ring_slots
from mtspeech.tasks.base import Role, task_with_role
from mtspeech.tasks.layer_mix import LEARNED, task_input

HEAD_ROLES = ("asr", "phones", "vad", "speaker")  # the streaming heads, in graph output order


@dataclass(frozen=True)
class ChunkOutput:
    """One encoder step's heads. logits: role → (B, c', V) (`vad`: (B, c')), raw (not normalised);
    lens: (B,) valid encoder frames per row (the recognizer steps rows of equal length)."""

    logits: dict[str, torch.Tensor]
    lens: torch.Tensor

    @property
    def frames(self) -> int:
        return next(iter(self.logits.values())).shape[1]


class EncoderStep(Protocol):
    """What the recognizer needs from an encoder runtime (torch here, onnxruntime in
    `mtspeech.export.runtime`). `roles`: the heads it can compute."""

    name: str
    roles: tuple[str, ...]
    chunk_frames: int
    left_chunks: int

    def init_cache(self, batch: int) -> EncoderCache: ...

    def __call__(self, feats: torch.Tensor, cache: EncoderCache, roles: Iterable[str] = ("asr",),
                 chunk_lens: torch.Tensor | None = None) -> tuple[ChunkOutput, EncoderCache]: ...


def step_update(step: EncoderStep, feats: torch.Tensor, cache: EncoderCache, roles: Iterable[str],
                chunk_lens: torch.Tensor | None = None) -> tuple[ChunkOutput, EncoderCache | CacheUpdate]:
    """One step, returning what changed in the cache where the runtime can (`update`, the torch
    steps: cheaper to store, `CachePool.apply`), else the new cache (onnxruntime's graphs)."""
    update = getattr(step, "update", None)
    return update(feats, cache, roles, chunk_lens) if update is not None else step(feats, cache, roles, chunk_lens)


# ----------------------------------------------------------------------------- heads by role


def asr_task(model: nn.Module) -> nn.Module:
    """The model's ASR task (`model.asr_task` names it); ValueError when it names none or a task
    whose role is not a transcript."""
    name = getattr(model, "asr_task", None)
    if name not in model.tasks:
        raise ValueError(f"model names no ASR task among its tasks {sorted(model.tasks)}")
    task = model.tasks[name]
    if getattr(task, "role", Role.TRANSCRIPT) is not Role.TRANSCRIPT:
        raise ValueError(f"the model's main task {name!r} has role {task.role.value!r}, not a transcript: "
                         "streaming decodes words from a transcript head")
    return task


def phone_task(model: nn.Module) -> nn.Module | None:
    """The phones head (the first task whose role is `Role.PHONES`), or None."""
    return task_with_role(model.tasks, Role.PHONES)


def vad_task(model: nn.Module) -> nn.Module | None:
    """The speech-activity head (the first task whose role is `Role.SPEECH_ACTIVITY`), or None."""
    return task_with_role(model.tasks, Role.SPEECH_ACTIVITY)


class SpeakerFrames(nn.Module):
    """The streaming face of a speaker-embedding task: `forward` returns the frames the task
    pools (its layer, tower or mix (B, T, D)), since its pooling spans more than a chunk;
    `embed(frames (N, D)) -> (E,)` pools them as the task pools a whole utterance."""

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.name, self.layer = task.name, task.layer
        if hasattr(task, "layer_mix"):
            self.layer_mix = task.layer_mix  # `task_input` reads it for a learned layer mix

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        return h

    @torch.inference_mode()
    def embed(self, frames: torch.Tensor) -> np.ndarray:
        lens = torch.tensor([frames.shape[0]], device=frames.device)
        return self.task.embed(frames[None], lens)[0].float().cpu().numpy()

    @property
    def embed_dim(self) -> int:
        return int(self.task.embedding.out_features)


def speaker_frames(model: nn.Module) -> SpeakerFrames | None:
    """The speaker-embedding task (the first whose role is `Role.SPEAKER_EMBEDDING`) as
    streaming reads it, or None."""
    task = task_with_role(model.tasks, Role.SPEAKER_EMBEDDING)
    return None if task is None else SpeakerFrames(task)


def head_tasks(model: nn.Module) -> dict[str, nn.Module]:
    """role → task for the heads streaming reads (`asr` always; `phones`, `vad`, `speaker` if present)."""
    found = {"asr": asr_task(model), "phones": phone_task(model), "vad": vad_task(model),
             "speaker": speaker_frames(model)}
    return {role: task for role, task in found.items() if task is not None}


class AttributeHeads(Mapping):
    """role → `getattr(owner, role)` for the streaming roles it holds (not None), read when used:
    a step built on it runs whatever head its owner holds now (the recognizer's tests swap in
    scripted VAD and speaker heads)."""

    def __init__(self, owner: object) -> None:
        self._owner = owner

    def __getitem__(self, role: str) -> nn.Module:
        task = getattr(self._owner, role, None) if role in HEAD_ROLES else None
        if task is None:
            raise KeyError(role)
        return task

    def __iter__(self):
        return (r for r in HEAD_ROLES if r in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def head_logits(heads: dict[str, nn.Module], out: EncoderOutput, roles: Iterable[str]) -> dict[str, torch.Tensor]:
    """role → logits of `heads[role]` on its input in the encoder output `out` (its layer, mix or
    tower). A head that conditioned the layers above it already ran on its layer in the encoder
    pass (`out.head_logits`, this chunk only): those logits are reused, not computed twice, as
    `MultiTaskModel._logits_at` does."""
    logits = {}
    for r in roles:
        task = heads[r]
        key = None if task.layer == LEARNED else (getattr(task, "name", None), task.layer % len(out.layers))
        logits[r] = out.head_logits[key] if key in out.head_logits else task(task_input(task, out), out.lens)
    return logits


# ----------------------------------------------------------------------------- the streams' caches


class CachePool:
    """The encoder caches of a recognizer's streams, one row each of one batched cache.

    A step gathers its streams' rows with one copy per tensor, where stacking B caches took
    5·B tensor operations, each a trip out of Python that another thread (the server's event
    loop) may hold up. It writes back only what changed (`apply`: the chunk's frames into their
    ring slots, `encoders/cache.py`), or a whole new cache (`put`: steps that return one, as
    onnxruntime's does). Rows are stored batch-major (every tensor's batch axis first), so a
    row is one contiguous block: gathering 48 of 64 rows of a demo model's (layers, batch, ...)
    keys along the second axis took 4.6x as long as along the first. `take` hands the encoder
    views in its own layout. Rows freed by finished or dropped streams are reused; the pool
    grows by doubling and keeps its peak size. Thread-safe: the server steps disjoint streams
    on several threads.
    """

    def __init__(self, init_cache: Callable[[int], EncoderCache]) -> None:
        self._init = init_cache
        self._lock = threading.Lock()
        empty = init_cache(0)
        self._rows = _batch_major(empty)
        self._blank = _batch_major(init_cache(1))
        self._chunk_frames = empty.chunk_frames
        self._free: list[int] = []

    @property
    def capacity(self) -> int:
        return self._rows["frames_seen"].shape[0]

    def acquire(self) -> int:
        """A row holding the state before any audio."""
        with self._lock:
            if not self._free:
                n = max(8, self.capacity)
                more = _batch_major(self._init(n))
                self._rows = {f: torch.cat([t, more[f]]) for f, t in self._rows.items()}
                self._free = list(range(self.capacity - 1, self.capacity - n - 1, -1))
            row = self._free.pop()
            for f, t in self._rows.items():
                t[row] = self._blank[f][0]
            return row

    def release(self, row: int) -> None:
        with self._lock:
            self._free.append(row)

    def take(self, rows: Sequence[int]) -> EncoderCache:
        """A copy of these rows, as one cache of batch len(rows) (its tensors: views of the copy)."""
        index = torch.tensor(rows, dtype=torch.long)
        with self._lock:
            return EncoderCache(**{f: t.index_select(0, index).movedim(0, BATCH_DIM[f])
                                   for f, t in self._rows.items()}, chunk_frames=self._chunk_frames)

    def put(self, rows: Sequence[int], cache: EncoderCache) -> None:
        """Store `cache` (batch len(rows)) as these rows."""
        index = torch.tensor(rows, dtype=torch.long)
        with self._lock:
            for f, t in self._rows.items():
                t.index_copy_(0, index, getattr(cache, f).movedim(BATCH_DIM[f], 0))

    def apply(self, rows: Sequence[int], update: CacheUpdate) -> None:
        """Write a step's `update` (batch len(rows)) into these rows, in place: its valid frames
        over the oldest slots of each row's ring, the new conv history and positions."""
        index = torch.tensor(rows, dtype=torch.long)
        t = update.valid.shape[1]
        with self._lock:
            keys, values, key_valid = self._rows["keys"], self._rows["values"], self._rows["key_valid"]
            if keys.shape[3] and t:
                seen = self._rows["frames_seen"].index_select(0, index)
                slots = ring_slots(seen, t, keys.shape[3])  # (B, t)
                at = (index.unsqueeze(1), slice(None), slice(None), slots)  # → (B, t, L, H, Dh)
                valid = update.valid
                everything = bool(valid.all())
                for store, new in ((keys, update.keys), (values, update.values)):
                    new = new.permute(1, 3, 0, 2, 4)  # (L, B, H, t, Dh) → (B, t, L, H, Dh)
                    store[at] = new if everything else torch.where(valid[:, :, None, None, None], new, store[at])
                key_valid[index.unsqueeze(1), slots] |= valid
            self._rows["conv"].index_copy_(0, index, update.conv.movedim(BATCH_DIM["conv"], 0))
            self._rows["frames_seen"].index_copy_(0, index, update.frames_seen)


def _batch_major(cache: EncoderCache) -> dict[str, torch.Tensor]:
    """The cache's tensors with their batch axis first, contiguous."""
    return {f: getattr(cache, f).movedim(d, 0).contiguous() for f, d in BATCH_DIM.items()}


# ----------------------------------------------------------------------------- the torch step


class TorchEncoderStep:
    """`model.encoder.forward_chunk` and the heads, in PyTorch, on the model's device.

    `heads`: role → task (default `head_tasks(model)`); looked up at every step, so a mapping
    that reads its owner's attributes sees a head swapped in later (the recognizer's tests do).
    """

    name = "torch"

    def __init__(self, model: nn.Module, chunk_frames: int, left_chunks: int,
                 heads: Mapping[str, nn.Module] | None = None) -> None:
        self.encoder = model.encoder
        self.heads = head_tasks(model) if heads is None else heads
        self.chunk_frames, self.left_chunks = chunk_frames, left_chunks

    @property
    def roles(self) -> tuple[str, ...]:
        """The heads it computes now (`heads` may be a live view)."""
        return tuple(r for r in HEAD_ROLES if r in self.heads)

    def init_cache(self, batch: int) -> EncoderCache:
        return self.encoder.init_cache(batch, self.chunk_frames, self.left_chunks)

    def __call__(self, feats: torch.Tensor, cache: EncoderCache, roles: Iterable[str] = ("asr",),
                 chunk_lens: torch.Tensor | None = None) -> tuple[ChunkOutput, EncoderCache]:
        """feats (B, N <= 4c+3, F) → (heads `roles` of the chunk, the new cache). `chunk_lens`
        (B,): real feature frames of right-padded rows (None: all N)."""
        out, update = self.update(feats, cache, roles, chunk_lens)
        return out, cache if update.valid.shape[1] == 0 else cache.updated(update)

    def update(self, feats: torch.Tensor, cache: EncoderCache, roles: Iterable[str] = ("asr",),
               chunk_lens: torch.Tensor | None = None) -> tuple[ChunkOutput, CacheUpdate]:
        """`__call__`, returning what changed in the cache instead of the new cache."""
        out, update = self.encoder.forward_chunk_update(feats, cache, chunk_lens)
        return ChunkOutput(head_logits(self.heads, out, roles), out.lens), update


def check_encoder_step(step: EncoderStep, chunk_frames: int, left_chunks: int, model: nn.Module) -> None:
    """An encoder step must chunk as the streaming config says (`chunk_frames`, `left_chunks`)
    and compute every head the model has: a graph exported for another chunk size or without
    the phone head would decode wrongly. (A step without the speaker head is refused only by
    streams that ask for speaker turns: graphs exported before them lack it.)"""
    if (step.chunk_frames, step.left_chunks) != (chunk_frames, left_chunks):
        raise ValueError(
            f"encoder step {step.name!r} runs chunk_frames={step.chunk_frames}, left_chunks={step.left_chunks} "
            f"but the streaming config asks for {chunk_frames}, {left_chunks}: export it again "
            f"with those (mtspeech export onnx --chunk-frames/--left-chunks) or change the config")
    missing = [r for r, t in (("phones", phone_task(model)), ("vad", vad_task(model))) if t and r not in step.roles]
    if missing:
        raise ValueError(f"encoder step {step.name!r} lacks the model's {missing} head(s); export it again")
