"""Tiny seeded encoders and random features for the encoder tests (dim 32, 2 layers)."""

import torch

from mtspeech.encoders import build_encoder

TINY = {"input_dim": 20, "dim": 32, "layers": 2, "heads": 2, "conv_kernel": 5, "max_chunk_frames": 4}


def tiny(name: str, **overrides):
    """A seeded tiny encoder of registry `name` (train mode, as built)."""
    cfg = dict(TINY, **overrides)
    if name != "conformer":
        cfg.pop("conv_kernel")
    torch.manual_seed(0)
    return build_encoder(name, cfg)


def feats(*lengths: int, dim: int = 20, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random right-padded (zeroed) features (B, max T, dim) and lens (B,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), dim, generator=g)
    lens = torch.tensor(lengths)
    x = x * (torch.arange(x.shape[1]) < lens[:, None]).unsqueeze(-1)
    return x, lens
