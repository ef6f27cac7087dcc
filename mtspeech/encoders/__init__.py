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
from typing import Any, Mapping

import torch


from mtspeech.encoders.cache import EncoderCache
from mtspeech.encoders.conformer import ConformerConfig, ConformerEncoder
from mtspeech.encoders.output import EncoderOutput
from mtspeech.encoders.transformer import TransformerConfig, TransformerEncoder

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
