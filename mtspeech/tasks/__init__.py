"""Pluggable training tasks: the `Task` protocol, `Targets`, and the registry kind → class.

A task reads one encoder layer and owns its head, its targets and its loss. Adding a task
is one file, one entry in `TASKS` and one YAML block; the model, trainer and evaluator
loop over the configured tasks and never name one.

Every task class has
  - `Config`: a frozen dataclass with `kind`, `name`, `layer` (negative = from the top,
    -1 = top), `weight` and kind-specific fields;
  - `fit_labels(cfg, train_utts, exp_dir) -> dict`: the JSON-able label space built from
    the training manifest (stored in the checkpoint, so the model rebuilds from its file);
  - `__init__(cfg, dim, labels)`, `collate`, `forward`, `loss`, `metrics` (see `Task`).

Missing labels are masks: `Targets.present` says which rows carry a label; absent rows
are left out of loss and metrics, and a batch without any present row gives a zero loss
that still has a graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import torch


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


@runtime_checkable
class Task(Protocol):
    """What the model, trainer and evaluator rely on (concrete tasks are `nn.Module`s)."""

    name: str
    layer: int

    def collate(self, utts: list) -> Targets:
        """Utterances → Targets. Runs in DataLoader workers: pure, picklable, CPU only."""

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        """h (B,T,D), h_lens (B,) → logits (shape is the task's own)."""

    def loss(self, logits: torch.Tensor, h_lens: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Scalar loss over present rows; 0 with a graph when none is present."""

    def metrics(
        self, logits: torch.Tensor, h_lens: torch.Tensor, targets: Targets
    ) -> dict[str, tuple[float, float]]:
        """name → (numerator, denominator), summable over batches and ranks."""


def zero_loss(logits: torch.Tensor) -> torch.Tensor:
    """A zero scalar attached to `logits`' graph (a batch without any label for a task).

    Keeping the graph means backward() and DDP see every head parameter every step.
    """
    return logits.sum() * 0.0


# Registry. Imported after `Targets`/`Task` exist: the task modules import them from here.
from mtspeech.tasks.ctc import CTCTask  # noqa: E402
from mtspeech.tasks.speaker import SpeakerTask  # noqa: E402
from mtspeech.tasks.vad import VADTask  # noqa: E402

TASKS: dict[str, type] = {"ctc": CTCTask, "speaker": SpeakerTask, "vad": VADTask}


def task_config(cfg: Any, where: str = "task") -> Any:
    """A task's typed `Config` from a plain dict (with `kind`), or the dataclass as is."""
    if not isinstance(cfg, Mapping):
        return cfg
    from mtspeech.config import ConfigError, from_dict

    kind = cfg.get("kind")
    if kind not in TASKS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {sorted(TASKS)}")
    return from_dict(TASKS[kind].Config, dict(cfg), where)


def fit_task_labels(cfg: Any, train_utts: Iterable, exp_dir: str | Path) -> dict:
    """Dispatch to the task class's `fit_labels` (JSON-able label space)."""
    cfg = task_config(cfg)
    return TASKS[cfg.kind].fit_labels(cfg, list(train_utts), Path(exp_dir))


def build_task(cfg: Any, dim: int, labels: dict) -> torch.nn.Module:
    """Build a task module from its config (dataclass or plain dict), encoder width and labels."""
    cfg = task_config(cfg)
    return TASKS[cfg.kind](cfg, dim, labels)


__all__ = [
    "TASKS",
    "CTCTask",
    "SpeakerTask",
    "Targets",
    "Task",
    "VADTask",
    "build_task",
    "fit_task_labels",
    "task_config",
    "zero_loss",
]
