"""Baseline streaming Transformer: the Conformer's front end, masks and cache, plain blocks.

Pre-norm blocks (x += MHSA(LN x); x += FFN(LN x); final LN) with the same rotary
attention, so the chunk masks, `forward_chunk` and `EncoderCache` are shared with the
Conformer unchanged; the cache's convolution history simply has size 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mtspeech.encoders.conformer import ConformerEncoder, EncoderConfig, FeedForward, RotarySelfAttention


@dataclass(frozen=True)
class TransformerConfig(EncoderConfig):
    """Transformer sizes and chunking: exactly the shared `EncoderConfig` fields."""


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
