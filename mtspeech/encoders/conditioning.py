"""Conditioning of upper encoder layers on a lower layer's CTC posteriors.

Self-conditioned CTC (Nozaki & Komatsu 2021) and hierarchical conditioning on a
lower-granularity CTC (Higuchi et al. 2022): after block k, a CTC head reads the block's
output h_k, and the posteriors go through a linear projection back to the encoder width
and are added to the residual stream the next block reads:

    logits_k = head(h_k)                     (B, T', V)
    h_k+1's input = h_k + Linear_V→D(softmax(logits_k))

The head is the task's own module (shared, not copied), so the conditioning posteriors are
the task's predictions and gradients of every upper task reach its head. The operation is
frame by frame, so in streaming a chunk is conditioned on its own posteriors only and the
chunked forward still equals the chunk-masked full forward.
"""

from __future__ import annotations

import torch
from torch import nn


class Conditioner(nn.Module):
    """One head's posteriors projected into the residual stream.

    Args:
        head: module `head(h (B,T,D), h_lens (B,)) -> logits (B,T,V)` (a CTC task).
        vocab_size: V, the head's output size.
        dim: D, the encoder width.
    """

    def __init__(self, head: nn.Module, vocab_size: int, dim: int):
        super().__init__()
        self.head = head
        self.proj = nn.Linear(vocab_size, dim)

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B,T,D), h_lens (B,) → (logits (B,T,V), residual update (B,T,D))."""
        logits = self.head(h, h_lens)
        return logits, self.proj(logits.softmax(-1))


def condition(
    groups: nn.ModuleDict,
    layer: int,
    h: torch.Tensor,
    h_lens: torch.Tensor,
    pad: torch.Tensor,
    head_logits: dict[tuple[str, int], torch.Tensor],
) -> torch.Tensor:
    """Block `layer`'s output h (B,T,D) → the next block's input (B,T,D).

    `groups[str(layer)]` maps task name → Conditioner (absent: h unchanged). Every
    conditioner reads the same h and their updates add up. Each head's logits are recorded
    in `head_logits[(name, layer)]` for the task losses to reuse. `pad` (B,T,1) is True on
    padding frames, which stay zero.
    """
    key = str(layer)
    if key not in groups:
        return h
    update = torch.zeros_like(h)
    for name, conditioner in groups[key].items():
        logits, delta = conditioner(h, h_lens)
        head_logits[(name, layer)] = logits
        update = update + delta
    return (h + update).masked_fill(pad, 0.0)
