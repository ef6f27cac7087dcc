"""The encoder step of the streaming recognizer: encoder chunk + heads, behind one small seam.

The recognizer (`mtspeech/streaming.py`) owns features, streams and endpointing; the token
decoders (`mtspeech/streaming_decoders.py`) turn log-probs into words. Between them sits the
encoder step, split off as torchaudio's streaming bundles split `model.infer` from the
feature extractor and the token processor, so another runtime can replace it alone:

    step = TorchEncoderStep(model, chunk_frames=8, left_chunks=16)   # or export.runtime.OnnxEncoderStep
    cache = step.init_cache(batch=1)                                  # an EncoderCache per stream
    out, cache = step(feats, cache, roles=("asr", "vad"))             # feats (B, N <= 4c+3, F)
    out.logits["asr"]  # (B, c', V) raw logits; "phones" (B, c', P); "vad" (B, c') speech logits

Heads by role: `asr` (the model's ASR task, required), `phones` (the CTC task with a phone
label space) and `vad` (the task with `speech_probs`), each read from its own encoder layer
(or learned layer mix) by `task_input`, the one rule the model and evaluation use too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol

import torch
from torch import nn

from mtspeech.encoders import EncoderOutput
from mtspeech.encoders.cache import EncoderCache
from mtspeech.tasks.layer_mix import task_input

HEAD_ROLES = ("asr", "phones", "vad")


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


# ----------------------------------------------------------------------------- heads by role


def asr_task(model: nn.Module) -> nn.Module:
    """The model's ASR task (`model.asr_task` names it); ValueError when it names none."""
    name = getattr(model, "asr_task_name", None) or getattr(model, "asr_task", None)
    if name not in model.tasks:
        raise ValueError(f"model names no ASR task among its tasks {sorted(model.tasks)}")
    return model.tasks[name]


def phone_task(model: nn.Module) -> nn.Module | None:
    """The phone CTC task (a `phones` label list), or None."""
    found = [t for t in model.tasks.values() if getattr(getattr(t, "cfg", None), "label", None) == "phones"]
    return found[0] if found else None


def vad_task(model: nn.Module) -> nn.Module | None:
    """The VAD task (the one exposing `speech_probs`), or None."""
    name = getattr(model, "vad_task_name", None)
    if name:
        return model.tasks[name]
    found = [t for t in model.tasks.values() if hasattr(t, "speech_probs")]
    return found[0] if found else None


def head_tasks(model: nn.Module) -> dict[str, nn.Module]:
    """role → task for the heads streaming reads (`asr` always; `phones`, `vad` if present)."""
    found = {"asr": asr_task(model), "phones": phone_task(model), "vad": vad_task(model)}
    return {role: task for role, task in found.items() if task is not None}


def head_logits(heads: dict[str, nn.Module], out: EncoderOutput, roles: Iterable[str]) -> dict[str, torch.Tensor]:
    """role → logits of `heads[role]` on its input in the encoder output `out` (its layer, mix or tower)."""
    return {r: heads[r](task_input(heads[r], out), out.lens) for r in roles}


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
        self.roles = tuple(r for r in HEAD_ROLES if r in self.heads)
        self.chunk_frames, self.left_chunks = chunk_frames, left_chunks

    def init_cache(self, batch: int) -> EncoderCache:
        return self.encoder.init_cache(batch, self.chunk_frames, self.left_chunks)

    def __call__(self, feats: torch.Tensor, cache: EncoderCache, roles: Iterable[str] = ("asr",),
                 chunk_lens: torch.Tensor | None = None) -> tuple[ChunkOutput, EncoderCache]:
        """feats (B, N <= 4c+3, F) → (heads `roles` of the chunk, the new cache). `chunk_lens`
        (B,): real feature frames of right-padded rows (None: all N)."""
        out, cache = self.encoder.forward_chunk(feats, cache, chunk_lens)
        return ChunkOutput(head_logits(self.heads, out, roles), out.lens), cache
