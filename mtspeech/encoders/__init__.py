"""Shared encoders: registry, output record and builder.

`ENCODERS` maps a config's `kind` to an encoder class; each class has a `Config` frozen
dataclass. Every encoder: `forward(x (B,T,F), x_lens (B,), chunk_frames=None,
left_chunks=None) -> EncoderOutput`, `init_cache`, `forward_chunk`, and the attributes
`dim`, `num_layers`, `subsampling`, `right_context`, `output_lens(x_lens)`, and
`add_conditioner(layer, name, head, vocab_size)` (a CTC head whose posteriors feed the
layers above `layer`; see `conditioning.py`).
Their configs may split the top layers into per-task towers (`encoder.towers`; see
`towers.py`); the encoder then has `towers` and a `cache_layers` larger than `num_layers`.

Registered: `conformer` (streaming Conformer, the default) and `transformer` (baseline:
same front end, masks and cache, no convolution module; also streaming-capable).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

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


# Imported after EncoderOutput: these modules import it from this package.
from mtspeech.encoders.cache import EncoderCache  # noqa: E402
from mtspeech.encoders.conformer import ConformerConfig, ConformerEncoder  # noqa: E402
from mtspeech.encoders.transformer import TransformerConfig, TransformerEncoder  # noqa: E402

ENCODERS: dict[str, type] = {
    "conformer": ConformerEncoder,
    "transformer": TransformerEncoder,
}


def build_encoder(name: str, cfg: Any = None) -> torch.nn.Module:
    """Build registered encoder `name` from its config dataclass or a plain dict of its fields
    (None = defaults). Unknown names, keys and wrong types raise with the offending value."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; registered: {sorted(ENCODERS)}")
    cls = ENCODERS[name]
    if cfg is None:
        cfg = cls.Config()
    elif isinstance(cfg, Mapping):
        from mtspeech.config import from_dict

        cfg = from_dict(cls.Config, dict(cfg), "encoder")
    elif not (dataclasses.is_dataclass(cfg) and isinstance(cfg, cls.Config)):
        raise TypeError(f"encoder {name!r} needs a {cls.Config.__name__} or a dict, got {type(cfg).__name__}")
    return cls(cfg)


__all__ = [
    "ENCODERS", "EncoderOutput", "EncoderCache", "build_encoder",
    "ConformerConfig", "ConformerEncoder", "TransformerConfig", "TransformerEncoder",
]
