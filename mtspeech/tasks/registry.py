"""The registry of task kinds: a config's `kind` → the task class that builds it.

A task module registers its class itself (`@register_task("vad")` on the class), so a new task
is one file (or a test file: see tests/test_toy_task.py) and nothing else names its kind: the
experiment builder, the trainer and the evaluator look kinds up here. The built-in kinds are
registered when `mtspeech.tasks` is imported.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from mtspeech.config import ConfigError, from_dict

TASKS: dict[str, type] = {}


def register_task(kind: str) -> Callable[[type], type]:
    """Class decorator: register a task class under `kind` (what a YAML block's `kind` names).

    Raises ValueError when `kind` is taken by another class (re-registering the same class, as a
    re-imported module does, is allowed).
    """

    def register(cls: type) -> type:
        if TASKS.get(kind, cls) is not cls and TASKS[kind].__qualname__ != cls.__qualname__:
            raise ValueError(f"task kind {kind!r} is already registered to {TASKS[kind].__qualname__}")
        TASKS[kind] = cls
        return cls

    return register


def task_config(cfg: Any, where: str = "task") -> Any:
    """A task's typed `Config` from a plain dict (with `kind`), or the dataclass as is.

    A key that only another kind takes is named with the kinds that take it.
    """
    if not isinstance(cfg, Mapping):
        return cfg
    kind = cfg.get("kind")
    if kind not in TASKS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {sorted(TASKS)}")
    own = {f.name for f in dataclasses.fields(TASKS[kind].Config)}
    for key in cfg:
        owners = sorted(k for k, c in TASKS.items() if key in {f.name for f in dataclasses.fields(c.Config)})
        if key not in own and owners:
            raise ConfigError(f"{where}.{key}: only `{'`, `'.join(owners)}` tasks take this key; "
                              f"{cfg.get('name', where)!r} is a {kind!r} task")
    return from_dict(TASKS[kind].Config, dict(cfg), where)


def fit_task_labels(cfg: Any, train_utts: Iterable, exp_dir: str | Path, data: Any = None) -> dict:
    """The task class's `fit_labels` (its JSON-able label space); `data`: the experiment's
    data config (speaker augmentation adds made-up voices to the speakers)."""
    cfg = task_config(cfg)
    return TASKS[cfg.kind].fit_labels(cfg, list(train_utts), Path(exp_dir), data=data)


def build_task(cfg: Any, dim: int, labels: dict) -> torch.nn.Module:
    """Build a task module from its config (dataclass or plain dict), encoder width and labels."""
    cfg = task_config(cfg)
    return TASKS[cfg.kind](cfg, dim, labels)
