"""`EncoderOutput`: what every encoder returns (every block's output, batch-first).

Its own module so the encoders import it without importing the package that gathers them
(`mtspeech.encoders` re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, eq=False)
class EncoderOutput:
    """Every block's output, batch-first.

    layers: list of L tensors (B, T', D); `layers[k]` is block k's output, `layers[-1]` the top.
        Frames at or past `lens` are zero.
    lens: (B,) int64 valid encoder frames per row.
    head_logits: (task name, layer index >= 0) → logits (B, T', V) of the heads that
        condition the layers above them (see `conditioning.py`), for the losses to reuse.
        Empty without conditioning.
    towers: task name → its tower's K outputs (B, T', D), bottom first, for an encoder with
        task towers (`towers.py`); then `layers` is the trunk followed by the first tower.
        Empty without towers. Read a task's layers with `task_layers`.
    """

    layers: list[torch.Tensor]
    lens: torch.Tensor
    head_logits: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    towers: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def task_layers(self, task: str | None) -> list[torch.Tensor]:
        """The L layers (B, T', D) task `task` reads: the trunk then its own tower if it has
        one, else `layers` (the trunk then the first tower; all of them without towers)."""
        if task not in self.towers:
            return self.layers
        tower = self.towers[task]
        return self.layers[: len(self.layers) - len(tower)] + tower
