"""Baseline streaming Transformer: the Conformer's front end, masks and cache, plain blocks.

Pre-norm blocks (x += MHSA(LN x); x += FFN(LN x); final LN) with the same rotary
attention, so the chunk masks, `forward_chunk` and `EncoderCache` are shared with the
Conformer unchanged; the cache's convolution history simply has size 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mtspeech.encoders.conformer import ConformerEncoder, FeedForward, RotarySelfAttention


@dataclass(frozen=True)
class TransformerConfig:
    """Transformer sizes and chunking (fields mean what they mean in `ConformerConfig`)."""

    input_dim: int = 80
    dim: int = 144
    layers: int = 8
    heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    dynamic_chunk: bool = True
    max_chunk_frames: int = 25
    left_chunks: int | None = None
    dynamic_left_chunks: bool = False
    subsampling_channels: int | None = None  # conv front-end width (None: dim)

    def __post_init__(self):
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.heads} heads of even size (rotary pairs)")
        if self.max_chunk_frames < 1:
            raise ValueError(f"max_chunk_frames must be >= 1, got {self.max_chunk_frames}")
        if self.left_chunks is not None and self.left_chunks < 0:
            raise ValueError(f"left_chunks must be >= 0 or None, got {self.left_chunks}")


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + FFN block with ConformerBlock's call signature."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm_attn = nn.LayerNorm(cfg.dim)
        self.attn = RotarySelfAttention(cfg.dim, cfg.heads, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult, cfg.dropout)  # carries its own pre-norm
        self.norm_out = nn.LayerNorm(cfg.dim)

    def forward(self, x, positions, mask, past_k=None, past_v=None, conv_history=None):
        """x (B,T,D) → (x (B,T,D), keys, values, empty conv history (B,D,0)); `conv_history` unused."""
        a, k, v = self.attn(self.norm_attn(x), positions, mask, past_k, past_v)
        x = x + self.drop(a)
        x = x + self.ff(x)
        return self.norm_out(x), k, v, x.new_zeros(x.shape[0], x.shape[2], 0)


class TransformerEncoder(ConformerEncoder):
    """Conv 4x subsampling + `layers` Transformer blocks; same API as `ConformerEncoder`."""

    Config = TransformerConfig

    def make_block(self, cfg: TransformerConfig) -> nn.Module:
        return TransformerBlock(cfg)

    @property
    def conv_history_frames(self) -> int:
        return 0
