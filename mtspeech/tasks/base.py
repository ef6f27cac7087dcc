"""What every task shares: `Targets`, the `Task` and `Scorer` protocols, and the `Role` enum.

A task reads one encoder layer and owns its head, its targets, its loss and its scorer (the one
implementation of its metrics, used by training's dev pass and by `mtspeech evaluate` alike).
It declares a `Role`: what its output means to the rest of the package. The streaming
recognizer, the decoding loader, the evaluator and the server find the heads they need by role,
never by a task's kind or by probing its attributes.

Missing labels are masks: `Targets.present` says which rows carry a label; absent rows are left
out of loss and metrics, and a batch without any present row gives a zero loss that still has
a graph.

This module imports nothing of the package, so every task module, and the registry, can import
it without importing each other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from mtspeech.encoders import EncoderOutput


class Role(str, enum.Enum):
    """What a task's output means outside training, and what a task of that role provides.

    - TRANSCRIPT: CTC logits (B,T,V) over word pieces; the task has `tokenizer`. The model's
      main task (`MultiTaskModel.asr_task`) is one.
    - PHONES: CTC logits (B,T,P+1) over phones, blank 0; the task has `phones` (the labels).
    - SPEAKER_EMBEDDING: utterance-level; the task has `embed(h, h_lens) -> (B,E)`.
    - SPEECH_ACTIVITY: one speech logit per frame (B,T); the task has `speech_probs(logits)`.
    - NONE: nothing outside training and evaluation reads it (its scorer still reports).
    """

    TRANSCRIPT = "transcript"
    PHONES = "phones"
    SPEAKER_EMBEDDING = "speaker-embedding"
    SPEECH_ACTIVITY = "speech-activity"
    NONE = "none"


@dataclass
class Targets:
    """One task's labels for one batch.

    Attributes:
        values: token ids (B,U) long / class ids (B,) long / frame labels (B,T') float.
        lens: (B,) long — valid length of each row of `values` (1 for utterance labels,
            0 for absent rows of sequence labels).
        present: (B,) bool — False where the utterance has no label for this task.
    """

    values: torch.Tensor
    lens: torch.Tensor
    present: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Targets":
        """Copy to `device` (the trainer moves targets next to the logits)."""
        return Targets(
            values=self.values.to(device, non_blocking=non_blocking),
            lens=self.lens.to(device, non_blocking=non_blocking),
            present=self.present.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> "Targets":
        """Called by DataLoader(pin_memory=True) on custom batch types."""
        return Targets(self.values.pin_memory(), self.lens.pin_memory(), self.present.pin_memory())


@dataclass(frozen=True)
class ScoredBatch:
    """What a scorer sees of one batch: the manifest records (row order), this task's logits
    (B,T,V) / (B,T) / (B,S), and the encoder output (`enc.lens` (B,), every layer, for heads
    that read more than their logits, such as the speaker embedding)."""

    utts: list
    logits: torch.Tensor
    enc: "EncoderOutput"


@dataclass(frozen=True)
class ScoringOptions:
    """How a scorer scores. `decode`: an offline decoder of this task's log-probs,
    `(log_probs (B,T,V), lens (B,)) -> hypotheses` with `.text` (and `.score`, `.words` when it
    times words), for roles that decode words (None: the task's own greedy best path).
    `max_trials`: the most speaker-verification trials an EER is computed on."""

    decode: Callable[[torch.Tensor, torch.Tensor], list] | None = None
    max_trials: int = 10_000


@dataclass
class Scores:
    """A scorer's result. Keys are `<task name>/<metric>`. `counts`: the numbers behind each
    metric (error counts, trials); `not_scored`: metric → why it could not be computed."""

    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, dict] = field(default_factory=dict)
    not_scored: dict[str, str] = field(default_factory=dict)


class Scorer(Protocol):
    """One task's metrics over a data set, a batch at a time.

    `collected`: everything `add` kept, as lists (name → list), so the trainer concatenates the
    lists of its DDP ranks before `finish`; a metric is computed once, over all of them.
    """

    collected: dict[str, list]

    def add(self, batch: ScoredBatch) -> list[dict]:
        """Score one batch; one JSON-able record per row (what `evaluate` writes per utterance)."""

    def finish(self) -> Scores:
        """The metrics over every batch added."""


@runtime_checkable
class Task(Protocol):
    """What the model, trainer and evaluator rely on (concrete tasks are `nn.Module`s).

    A task class also has `Config` (a frozen dataclass with `kind`, `name`, `layer`, `weight`
    and a `role` property) and `fit_labels(cfg, train_utts, exp_dir, data=None) -> dict`
    (the JSON-able label space; `data` is the experiment's data config). It may have
    `attach(encoder)`: called once when the model is built, to check its layers against the
    encoder or hook into it (CTC's conditioning).
    """

    name: str
    layer: int
    role: Role

    def collate(self, utts: list) -> Targets:
        """Utterances → Targets. Runs in DataLoader workers: pure, picklable, CPU only."""

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        """h (B,T,D), h_lens (B,) → logits (shape is the task's own)."""

    def loss(self, logits: torch.Tensor, h_lens: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Scalar loss over present rows; 0 with a graph when none is present."""

    def scorer(self, options: ScoringOptions) -> Scorer:
        """A fresh scorer of this task's metrics."""


def zero_loss(logits: torch.Tensor) -> torch.Tensor:
    """A zero scalar attached to `logits`' graph (a batch without any label for a task).

    Keeping the graph means backward() and DDP see every head parameter every step.
    """
    return logits.sum() * 0.0


def task_with_role(tasks: Mapping[str, Any], role: Role) -> Any | None:
    """The first task of `tasks` (name → task) whose `role` is `role`, or None."""
    return next((t for t in tasks.values() if getattr(t, "role", Role.NONE) is role), None)
