"""Tiny seeded encoders and random features for the encoder tests (dim 32, 2 layers)."""

import torch

from mtspeech.encoders import build_encoder
from mtspeech.encoders.subsampling import chunk_windows

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


def stream_alone(enc, x, chunk_frames, left_chunks):
    """Drive forward_chunk over one utterance x (1,T,F) with the 4c+3 / 4c windows →
    (every layer's chunk outputs concatenated: L × (1,T',D), head_logits likewise by key, cache)."""
    cache = enc.init_cache(1, chunk_frames, left_chunks)
    outs, logits = [[] for _ in range(enc.num_layers)], {}
    for start, end in chunk_windows(x.shape[1], chunk_frames):
        out, cache = enc.forward_chunk(x[:, start:end], cache)
        for k, layer in enumerate(out.layers):
            outs[k].append(layer)
        for key, value in out.head_logits.items():
            logits.setdefault(key, []).append(value)
    return [torch.cat(o, dim=1) for o in outs], {k: torch.cat(v, dim=1) for k, v in logits.items()}, cache
