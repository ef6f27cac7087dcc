"""Checkpoints: atomic save, strict load, averaging.

A checkpoint holds everything needed to rebuild and resume: the resolved config, the
label spaces (tokenizer, phones, speakers), model weights, and for resumption the
optimizer, scheduler, loss-weighting, sampler position and RNG states. Saving writes a
temporary file in the same folder and renames it, so a crash mid-save never destroys the
previous checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def save_atomic(state: dict, path: str | Path) -> Path:
    """torch.save to `path` through a temp file + rename (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_state(path: str | Path) -> dict:
    """Load a checkpoint dict onto the CPU with a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read ({e}); is it a truncated or foreign file?") from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not an mtspeech checkpoint (no 'model'/'config' entries)")
    return state


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) RNG states, for exact resumption."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_of_rank(rng: dict, rank: int, world_size: int) -> dict:
    """One rank's RNG state from a checkpoint's `rng` (older checkpoints hold rank 0's only)."""
    per_rank = rng.get("per_rank", [rng])
    if len(per_rank) != world_size:
        log.warning("checkpoint holds RNG states of %d ranks, this run has %d: ranks beyond "
                    "them reuse rank 0's", len(per_rank), world_size)
    return per_rank[rank] if rank < len(per_rank) else per_rank[0]


def average_weights(paths: list[str | Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints (integer buffers from the last)."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    avg: dict[str, torch.Tensor] = {}
    for path in paths:
        weights = load_state(path)["model"]
        for key, value in weights.items():
            if value.is_floating_point():
                avg[key] = avg.get(key, 0) + value.double() / len(paths)
            else:
                avg[key] = value
    first = load_state(paths[0])["model"]
    return {k: v.to(first[k].dtype) for k, v in avg.items()}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any, dict]:
    """Rebuild a model from its checkpoint alone → (model in eval mode, Experiment, labels)."""
    from mtspeech.experiment import build_model, experiment_from_dict

    state = load_state(path)
    exp = experiment_from_dict(state["config"])
    model = build_model(exp, state["labels"])
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model its config describes: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), exp, state["labels"]
