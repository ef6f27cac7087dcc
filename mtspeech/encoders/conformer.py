"""Streaming Conformer: chunk-masked full forward and cached chunk-by-chunk forward.

One model, two modes. `forward` runs a whole (padded) batch with an attention mask that
limits each frame to its own chunk and `left_chunks` chunks before it; `forward_chunk`
runs one chunk at a time with an explicit `EncoderCache`, and gives the same numbers.
What makes the two agree exactly:

- rotary position embeddings at absolute frame positions: cached keys are stored rotated
  and keep their positions, so attention scores depend only on the two frames involved;
- a causal depthwise convolution (left padding only), whose history is cached;
- LayerNorm, not BatchNorm, in the convolution module, so neither batch composition nor
  padding changes a row's result;
- a subsampling front end without time padding (see `subsampling.py` for the `4c+3`
  window / `4c` stride rule).

Block (macaron): x += ½·FFN(x); x += MHSA(x); x += Conv(x); x += ½·FFN(x); x = LN(x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtspeech.data.geometry import RIGHT_CONTEXT, SUBSAMPLING
from mtspeech.encoders.output import EncoderOutput
from mtspeech.encoders.cache import CacheUpdate, EncoderCache
from mtspeech.encoders.conditioning import Conditioner, condition
from mtspeech.encoders.masks import attention_mask, padding_mask, sample_chunk
from mtspeech.encoders.subsampling import Conv2dSubsampling4, chunk_window, subsampled_lens
from mtspeech.encoders.towers import BranchingConfig, Towers, TowersConfig


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes and chunking shared by the streaming encoders. `left_chunks` limits left context
    during training (None = unlimited); `dynamic_left_chunks` samples it per batch in
    0..left_chunks. `towers` splits the top layers per task (see `towers.py`; None: fully shared);
    `branching` has training choose them from task affinity instead (`mtspeech/branching.py`)."""

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
    towers: TowersConfig | None = None
    branching: BranchingConfig | None = None

    def __post_init__(self):
        if self.towers is not None and self.branching is not None:
            raise ValueError("encoder.towers and encoder.branching are exclusive: branching chooses the towers "
                             "itself (remove encoder.towers), or write them by hand (remove encoder.branching)")
        if self.branching is not None and (self.branching.max_layers or 0) > self.layers:
            raise ValueError(f"encoder.branching.max_layers={self.branching.max_layers} exceeds the encoder's "
                             f"{self.layers} layers")
        if self.towers is not None and self.towers.layers > self.layers:
            raise ValueError(f"encoder.towers.layers={self.towers.layers} exceeds the encoder's {self.layers} layers")
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.heads} heads of even size (rotary pairs)")
        if self.max_chunk_frames < 1:
            raise ValueError(f"max_chunk_frames must be >= 1, got {self.max_chunk_frames}")
        if self.left_chunks is not None and self.left_chunks < 0:
            raise ValueError(f"left_chunks must be >= 0 or None, got {self.left_chunks}")


@dataclass(frozen=True)
class ConformerConfig(EncoderConfig):
    """Conformer: the shared sizes plus the convolution module's kernel."""

    conv_kernel: int = 15

    def __post_init__(self):
        super().__post_init__()
        if self.conv_kernel < 1:
            raise ValueError(f"conv_kernel must be >= 1, got {self.conv_kernel}")


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary embedding. x (B,H,T,Dh), positions (B,T) absolute frame indices, inv_freq (Dh/2,).

    Rotates the pairs (x[..., i], x[..., i + Dh/2]) by angle `position * inv_freq[i]`.
    """
    angles = positions.to(inv_freq.dtype).unsqueeze(-1) * inv_freq  # (B, T, Dh/2)
    cos, sin = angles.cos().unsqueeze(1).to(x.dtype), angles.sin().unsqueeze(1).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class RotarySelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and optional cached left context."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        past_k: torch.Tensor | None = None,
        past_v: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B,T,D), positions (B,T), mask (B,1,T,P+T) bool, past_k/v (B,H,P,Dh) rotated.

        Returns (out (B,T,D), keys (B,H,P+T,Dh), values (B,H,P+T,Dh)): past then current.
        """
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = apply_rope(q, positions, self.inv_freq)
        k = apply_rope(k, positions, self.inv_freq)
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, t, d)), k, v


class FeedForward(nn.Module):
    """Pre-norm position-wise FFN: LN → Linear(D, mD) → Swish → Linear(mD, D)."""

    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, mult * dim), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(mult * dim, dim), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,T,D) → (B,T,D)."""
        return self.net(x)


class CausalConvModule(nn.Module):
    """LN → pointwise GLU → causal depthwise conv → LN → Swish → pointwise.

    The depthwise convolution sees only the current and `kernel-1` previous frames; those
    previous frames come from `history` (zeros at the start of an utterance).
    """

    def __init__(self, dim: int, kernel: int, dropout: float):
        super().__init__()
        self.history_frames = kernel - 1
        self.norm_in = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.norm_mid = nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,T,D), history (B,D,K-1) or None → (out (B,T,D), conv input with history (B,D,K-1+T))."""
        y = F.glu(self.pointwise_in(self.norm_in(x)), dim=-1).transpose(1, 2)  # (B, D, T)
        if history is None:
            history = y.new_zeros(y.shape[0], y.shape[1], self.history_frames)
        y = torch.cat([history, y], dim=2)
        z = self.depthwise(y).transpose(1, 2)  # (B, T, D)
        z = self.pointwise_out(F.silu(self.norm_mid(z)))
        return self.drop(z), y


class ConformerBlock(nn.Module):
    """One macaron Conformer block; see the module docstring."""

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.ff1 = FeedForward(cfg.dim, cfg.ff_mult, cfg.dropout)
        self.norm_attn = nn.LayerNorm(cfg.dim)
        self.attn = RotarySelfAttention(cfg.dim, cfg.heads, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.conv = CausalConvModule(cfg.dim, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(cfg.dim, cfg.ff_mult, cfg.dropout)
        self.norm_out = nn.LayerNorm(cfg.dim)

    def forward(self, x, positions, mask, past_k=None, past_v=None, conv_history=None):
        """x (B,T,D) → (x (B,T,D), keys (B,H,P+T,Dh), values, conv input (B,D,K-1+T))."""
        x = x + 0.5 * self.ff1(x)
        a, k, v = self.attn(self.norm_attn(x), positions, mask, past_k, past_v)
        x = x + self.drop(a)
        c, conv_in = self.conv(x, conv_history)
        x = x + c
        x = x + 0.5 * self.ff2(x)
        return self.norm_out(x), k, v, conv_in


class ConformerEncoder(nn.Module):
    """Conv 4x subsampling + `layers` Conformer blocks; every block's output is returned.

    Attributes: `dim`, `num_layers`, `subsampling` (4), `right_context` (6 feature frames:
    a chunk of c encoder frames needs 4c+3 feature frames, the next starts 4c later),
    `conditioners` (layer index → task name → `Conditioner`; empty unless
    `add_conditioner` was called, so checkpoints without conditioning load unchanged),
    `towers` (the per-task top layers of `towers.py`, or None: then `blocks` holds all L
    blocks and the state dict has no tower keys; with towers, `blocks` is the L-K trunk).
    """

    Config = ConformerConfig
    subsampling = SUBSAMPLING
    right_context = RIGHT_CONTEXT

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        self.dim, self.num_layers = cfg.dim, cfg.layers
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.front = Conv2dSubsampling4(cfg.input_dim, cfg.dim, cfg.subsampling_channels)
        trunk = cfg.layers - (cfg.towers.layers if cfg.towers is not None else 0)
        self.blocks = nn.ModuleList(self.make_block(cfg) for _ in range(trunk))
        self.towers = Towers(cfg.towers, lambda: self.make_block(cfg), trunk) if cfg.towers is not None else None
        self.conditioners = nn.ModuleDict()

    def add_conditioner(self, layer: int, name: str, head: nn.Module, vocab_size: int) -> None:
        """Condition the blocks above `layer` on `head`'s posteriors (see `conditioning.py`).

        layer: block index, negative from the top; the top block has nothing above it.
        head: `head(h (B,T,D), h_lens (B,)) -> logits (B,T,vocab_size)`, e.g. a CTC task.
        """
        index = layer + self.num_layers if layer < 0 else layer
        if not 0 <= index < self.num_layers - 1:
            raise ValueError(
                f"cannot condition on layer {layer} of a {self.num_layers}-layer encoder: it needs a "
                f"block above it (layers 0..{self.num_layers - 2}, or {-self.num_layers}..-2)")
        if index >= len(self.blocks):  # a tower layer: which towers' inputs would it feed?
            raise ValueError(
                f"cannot condition on layer {layer}: it lies in the task towers (layers {len(self.blocks)}.."
                f"{self.num_layers - 1}); conditioning inside towers is not supported, condition a trunk "
                f"layer 0..{len(self.blocks) - 1} (the trunk's top feeds every tower)")
        group = self.conditioners[str(index)] if str(index) in self.conditioners else nn.ModuleDict()
        if name in group:
            raise ValueError(f"{name!r} already conditions layer {index}")
        group[name] = Conditioner(head, vocab_size, self.dim)
        self.conditioners[str(index)] = group

    def make_block(self, cfg) -> nn.Module:
        """One block; the block's forward signature is ConformerBlock's."""
        return ConformerBlock(cfg)

    @property
    def cache_layers(self) -> int:
        """Layers of streaming state: the trunk's blocks, then every tower's (`Towers.cache_slot`)."""
        return len(self.blocks) + (self.towers.cache_slots if self.towers is not None else 0)

    @property
    def conv_history_frames(self) -> int:
        """Frames of causal-conv history each layer keeps in the streaming cache."""
        return self.cfg.conv_kernel - 1

    def output_lens(self, x_lens: torch.Tensor) -> torch.Tensor:
        """Feature-frame lengths (B,) → encoder-frame lengths (B,)."""
        return subsampled_lens(x_lens)

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        chunk_frames: int | None = None,
        left_chunks: int | None = None,
    ) -> EncoderOutput:
        """x (B,T,F) features, x_lens (B,) → EncoderOutput(layers: L × (B,T',D), lens (B,)).

        `chunk_frames` (encoder frames) limits attention to chunks, with `left_chunks` chunks
        of left context (None = unlimited; ignored when `chunk_frames` is None = full
        context). In train mode with `dynamic_chunk` and no `chunk_frames`, a chunk size is
        sampled for the batch. Padded frames of every layer are zeroed.
        """
        h, lens = self.front(x, x_lens)
        b, t, _ = h.shape
        if t == 0:  # every item shorter than one receptive field (7 feature frames)
            return self._empty_output(h, lens)
        if self.training and self.cfg.dynamic_chunk and chunk_frames is None:
            chunk_frames, left_chunks = sample_chunk(
                self.cfg.max_chunk_frames, self.cfg.left_chunks, t, self.cfg.dynamic_left_chunks
            )
        mask = attention_mask(lens, t, chunk_frames, left_chunks)
        pad = ~padding_mask(lens, t).unsqueeze(-1)
        positions = torch.arange(t, device=h.device).expand(b, t)
        layers, head_logits = [], {}

        def step(_slot: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            return block(h, positions, mask)[0].masked_fill(pad, 0.0)

        for i, block in enumerate(self.blocks):
            h = step(i, block, h)
            layers.append(h)
            h = condition(self.conditioners, i, h, lens, pad, head_logits)
        return self._output(layers, h, lens, head_logits, step)

    def _output(self, trunk: list[torch.Tensor], h: torch.Tensor, lens: torch.Tensor,
                head_logits: dict, step) -> EncoderOutput:
        """The trunk's layers and (with towers) each tower's, run on the trunk output h (B,T',D).

        `layers` is the trunk followed by the first tower: what tasks without a tower read.
        """
        if self.towers is None:
            return EncoderOutput(layers=trunk, lens=lens, head_logits=head_logits)
        towers = self.towers(h, step)
        return EncoderOutput(layers=trunk + towers[self.towers.tasks[0]], lens=lens,
                             head_logits=head_logits, towers=towers)

    def _empty_output(self, h: torch.Tensor, lens: torch.Tensor) -> EncoderOutput:
        """The output for inputs too short for one encoder frame: every layer is h (B,0,D)."""
        towers = {} if self.towers is None else {t: [h] * self.towers.depth for t in self.towers.tasks}
        return EncoderOutput(layers=[h] * self.num_layers, lens=lens, towers=towers)

    def init_cache(
        self, batch: int, chunk_frames: int, left_chunks: int, device: torch.device | str | None = None
    ) -> EncoderCache:
        """Empty streaming state for `batch` streams (fixed size: needs a finite `left_chunks`).

        Streaming with this cache equals `forward(x, x_lens, chunk_frames, left_chunks)`.
        """
        if left_chunks is None:
            raise ValueError(
                "init_cache needs a finite left_chunks (the cache has a fixed size); "
                "pass e.g. left_chunks=4 and compare with forward(..., chunk_frames, left_chunks=4)"
            )
        if chunk_frames is None or chunk_frames < 1 or left_chunks < 0:
            raise ValueError(f"init_cache needs chunk_frames >= 1 and left_chunks >= 0, got {chunk_frames}, {left_chunks}")
        param = next(self.parameters())
        return EncoderCache.empty(
            num_layers=self.cache_layers, batch=batch, heads=self.heads, head_dim=self.head_dim,
            dim=self.dim, conv_history=self.conv_history_frames, chunk_frames=chunk_frames,
            left_chunks=left_chunks, device=device if device is not None else param.device, dtype=param.dtype,
        )

    def forward_chunk(
        self, x: torch.Tensor, cache: EncoderCache, chunk_lens: torch.Tensor | None = None
    ) -> tuple[EncoderOutput, EncoderCache]:
        """One chunk per stream. x (B, N, F) with N <= 4c+3 feature frames, cache of batch B.

        Every row's window is `4c+3` feature frames, the next one starting `4c` later; only a
        stream's last window may be shorter. Rows of a batch may be at different progress.
        `chunk_lens` (B,) gives each row's real frame count when rows are right-padded to N
        (e.g. one stream at its last chunk); a row with 0 real frames leaves its cache as is.
        Returns (EncoderOutput: L × (B, c', D) and lens (B,), the new cache); the cache is
        updated with each row's real frames only. `forward_chunk_update` returns what changed
        instead, for a caller that keeps the cache in place (`streaming.encoder.CachePool`).
        """
        out, update = self.forward_chunk_update(x, cache, chunk_lens)
        return out, cache if update.valid.shape[1] == 0 else cache.updated(update)

    def forward_chunk_update(
        self, x: torch.Tensor, cache: EncoderCache, chunk_lens: torch.Tensor | None = None
    ) -> tuple[EncoderOutput, CacheUpdate]:
        """`forward_chunk`, returning the chunk's `CacheUpdate` instead of the new cache."""
        b, n, _ = x.shape
        c = cache.chunk_frames
        window, _ = chunk_window(c)
        if n > window:
            raise ValueError(f"forward_chunk got {n} feature frames; chunks of {c} frames take at most {window} (4c+3)")
        if cache.batch_size != b:
            raise ValueError(f"cache holds {cache.batch_size} streams but x has {b} rows")
        if cache.keys.shape[0] != self.cache_layers:
            raise ValueError(f"cache holds {cache.keys.shape[0]} layers of state but this encoder needs "
                             f"{self.cache_layers} (trunk + towers); build it with init_cache")
        full = chunk_lens is None  # every row a full window: the new conv history is a slice
        if chunk_lens is None:
            chunk_lens = torch.full((b,), n, dtype=torch.long, device=x.device)
        h, lens = self.front(x, chunk_lens)
        t = h.shape[1]
        valid = padding_mask(lens, t)  # (B, t)
        if t == 0:
            return self._empty_output(h, lens), self._no_update(cache, valid)

        left = cache.left_frames
        key_valid = torch.cat([cache.key_valid, valid], dim=1)  # (B, left + t): the ring, then the chunk
        mask = key_valid.unsqueeze(1).repeat(1, t, 1)  # every query sees its whole chunk
        diag = torch.arange(t, device=h.device)
        mask[:, diag, left + diag] = True  # no all-False row on padding rows
        mask = mask.unsqueeze(1)
        positions = cache.frames_seen.unsqueeze(1) + torch.arange(t, device=h.device)
        pad = ~valid.unsqueeze(-1)
        if not full:  # the new conv history ends at each row's last real frame
            keep_conv = lens.unsqueeze(1) + torch.arange(self.conv_history_frames, device=h.device)
        keys, values, convs = {}, {}, {}  # cache slot → the chunk's entries (towers run layer-major)

        def step(slot: int, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
            h, k, v, conv_in = block(h, positions, mask, cache.keys[slot], cache.values[slot], cache.conv[slot])
            keys[slot], values[slot] = k[:, :, left:], v[:, :, left:]  # views; stacked (copied) once below
            if full:
                convs[slot] = conv_in[:, :, t:]
            else:
                convs[slot] = conv_in.gather(2, keep_conv[:, None, :].expand(b, conv_in.shape[1], -1))
            return h.masked_fill(pad, 0.0)

        layers, head_logits = [], {}
        for i, block in enumerate(self.blocks):
            h = step(i, block, h)
            layers.append(h)
            h = condition(self.conditioners, i, h, lens, pad, head_logits)  # this chunk's posteriors only
        out = self._output(layers, h, lens, head_logits, step)
        slots = range(self.cache_layers)
        update = CacheUpdate(
            keys=torch.stack([keys[s] for s in slots]), values=torch.stack([values[s] for s in slots]),
            valid=valid, conv=torch.stack([convs[s] for s in slots]), frames_seen=cache.frames_seen + lens,
        )
        return out, update

    @staticmethod
    def _no_update(cache: EncoderCache, valid: torch.Tensor) -> CacheUpdate:
        """The update of a chunk without encoder frames: nothing written, nothing moved."""
        shape = (*cache.keys.shape[:3], 0, cache.keys.shape[4])
        return CacheUpdate(keys=cache.keys.new_zeros(shape), values=cache.values.new_zeros(shape), valid=valid,
                           conv=cache.conv, frames_seen=cache.frames_seen)
