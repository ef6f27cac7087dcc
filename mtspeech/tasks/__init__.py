"""Pluggable training tasks: the `Task` protocol, `Targets`, roles, scorers and the registry.

A task reads one encoder layer and owns its head, its targets, its loss and its scorer, and
declares its `Role` (`base.py`). Adding a task is one file whose class registers its kind
(`registry.register_task`) and one YAML block; the model, trainer, evaluator and streaming
recognizer loop over the configured tasks, find heads by role, and never name a kind.

Every task class has
  - `Config`: a frozen dataclass with `kind`, `name`, `layer` (negative = from the top,
    -1 = top, or "learned"), `weight`, a `role` property and kind-specific fields;
  - `fit_labels(cfg, train_utts, exp_dir, data=None) -> dict`: the JSON-able label space built
    from the training manifest (stored in the checkpoint, so the model rebuilds from its file);
  - `__init__(cfg, dim, labels)`, `role`, `collate`, `forward`, `loss`, `scorer` (see `Task`).

This package gathers the built-in kinds (importing it registers them); its modules import
`base.py` and `registry.py`, never this file.
"""

from mtspeech.tasks.base import Role, ScoredBatch, Scorer, Scores, ScoringOptions, Targets, Task, task_with_role, zero_loss
from mtspeech.tasks.ctc import CTCTask
from mtspeech.tasks.registry import TASKS, build_task, fit_task_labels, register_task, task_config
from mtspeech.tasks.speaker import SpeakerTask
from mtspeech.tasks.vad import VADTask

__all__ = [
    "TASKS",
    "CTCTask",
    "Role",
    "ScoredBatch",
    "Scorer",
    "Scores",
    "ScoringOptions",
    "SpeakerTask",
    "Targets",
    "Task",
    "VADTask",
    "build_task",
    "fit_task_labels",
    "register_task",
    "task_config",
    "task_with_role",
    "zero_loss",
]
