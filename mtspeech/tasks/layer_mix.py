"""Learned layer selection: a task reads a softmax-weighted sum of every encoder layer.

`layer: learned` in a task's config replaces the fixed layer index with SUPERB's weighted
sum (Yang et al. 2021): one learned scalar per encoder layer, softmax-normalised, so the
weights sum to one and show where the task finds its information. The sum is per frame,
so a streaming chunk's mix equals the full forward's mix on the same frames.

The task owns its `LayerMix` (`task.layer_mix`, attached by `experiment.build_model`, which
knows the encoder's depth); `task_input` is the one place every caller (model, streaming,
evaluation) turns an encoder output into the tensor a task reads. With task towers
(`encoders/towers.py`) a task's L layers are the trunk then its own tower
(`EncoderOutput.task_layers`): its index or mix means the same, over its own top layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from mtspeech.encoders import EncoderOutput

LEARNED = "learned"
LayerSpec = int | Literal["learned"]  # a task config's `layer`: an index (negative = from the top) or "learned"


class LayerMix(nn.Module):
    """Softmax-weighted sum of L encoder layers, weights learned (uniform at start).

    Args:
        num_layers: L, the encoder's depth.
    """

    def __init__(self, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"LayerMix needs at least one layer, got num_layers={num_layers}")
        # Logits, not weights: the softmax keeps the weights positive and summing to one.
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def weights(self) -> torch.Tensor:
        """(L,) the current layer weights, summing to one."""
        return self.logits.softmax(-1)

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """layers: L tensors (B,T,D) → their weighted sum (B,T,D)."""
        if len(layers) != self.logits.numel():
            raise ValueError(f"LayerMix was built for {self.logits.numel()} encoder layers, got {len(layers)}")
        w = self.weights().to(layers[0].dtype)
        return sum(w_k * h for w_k, h in zip(w, layers))


def task_input(task: nn.Module, enc: "EncoderOutput") -> torch.Tensor:
    """The (B,T,D) tensor `task` reads from an encoder output: its layer, or its learned mix,
    of the L layers (B,T,D) it sees (`enc.task_layers(task.name)`: its tower if it has one;
    a head without a `name`, e.g. a test's stand-in, has none)."""
    layers = enc.task_layers(getattr(task, "name", None))
    if task.layer == LEARNED:
        return task.layer_mix(layers)
    return layers[task.layer]


def attach_layer_mix(task: nn.Module, num_layers: int, where: str, tower_layers: int = 0) -> None:
    """Check `task.layer` against an encoder of `num_layers` layers; give a `learned` task its mix.

    `tower_layers`: K when the task has a tower of its own over the top K layers; it must then
    read a tower layer (a trunk layer would leave its tower without gradient).
    `where` names the config key in errors (e.g. `tasks.phones.layer`).
    """
    from mtspeech.config import ConfigError

    if task.layer == LEARNED:
        task.layer_mix = LayerMix(num_layers)
    elif isinstance(task.layer, bool) or not isinstance(task.layer, int):
        raise ConfigError(f"{where}: {task.layer!r} is neither a layer index nor {LEARNED!r}")
    elif not -num_layers <= task.layer < num_layers:
        raise ConfigError(f"{where}: {task.layer} is outside the encoder's {num_layers} layers "
                          f"(use 0..{num_layers - 1}, negative from the top, or {LEARNED!r})")
    elif tower_layers and task.layer % num_layers < num_layers - tower_layers:
        first = num_layers - tower_layers
        raise ConfigError(f"{where}: {task.layer} reads the shared trunk (layers 0..{first - 1}), below the "
                          f"task's own tower (layers {first}..{num_layers - 1}), which would then get no "
                          f"gradient: read a tower layer ({first}..{num_layers - 1}, -{tower_layers}..-1, or "
                          f"{LEARNED!r}), or leave the task out of encoder.towers.tasks")


def layer_weights(tasks: dict[str, nn.Module]) -> dict[str, list[float]]:
    """task name → its learned layer weights (bottom layer first), for tasks with `layer: learned`."""
    return {name: task.layer_mix.weights().tolist() for name, task in tasks.items() if task.layer == LEARNED}
