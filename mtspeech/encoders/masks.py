"""Padding and chunk attention masks, and dynamic-chunk sampling for training.

All masks are boolean with True = "may attend / is a real frame", the convention of
`torch.nn.functional.scaled_dot_product_attention`. Frame counts are encoder frames
(after subsampling).
"""

from __future__ import annotations

import torch


def padding_mask(lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """lens (B,) → (B, max_len) bool, True on real frames."""
    return torch.arange(max_len, device=lens.device) < lens.unsqueeze(1)


def chunk_mask(
    num_frames: int,
    chunk_frames: int,
    left_chunks: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(T, T) bool: query t may attend key s iff s is in t's chunk or in the `left_chunks`
    chunks before it (`None` = every earlier chunk). Chunks are `[k c, (k+1) c)`."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if left_chunks is not None and left_chunks < 0:
        raise ValueError(f"left_chunks must be >= 0 or None, got {left_chunks}")
    chunk = torch.arange(num_frames, device=device) // chunk_frames
    q, k = chunk.unsqueeze(1), chunk.unsqueeze(0)
    mask = k <= q
    if left_chunks is not None:
        mask &= k >= q - left_chunks
    return mask


def attention_mask(
    lens: torch.Tensor,
    max_len: int,
    chunk_frames: int | None = None,
    left_chunks: int | None = None,
) -> torch.Tensor:
    """Full-forward self-attention mask (B, 1, T, T): real keys only, within the chunk limits.

    `chunk_frames=None` is full context (`left_chunks` is then ignored). Padded query rows
    may attend themselves so that no row is all-False (which would make softmax NaN); real
    rows always contain their own key already, so this changes nothing for them.
    """
    mask = padding_mask(lens, max_len).unsqueeze(1)  # (B, 1, T) over keys
    if chunk_frames is not None:
        mask = mask & chunk_mask(max_len, chunk_frames, left_chunks, lens.device)
    else:
        mask = mask.expand(-1, max_len, -1)
    mask = mask | torch.eye(max_len, dtype=torch.bool, device=lens.device)
    return mask.unsqueeze(1)


def sample_chunk(
    max_chunk_frames: int,
    left_chunks: int | None,
    num_frames: int,
    dynamic_left_chunks: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[int | None, int | None]:
    """Dynamic-chunk training (WeNet): one (chunk_frames, left_chunks) for a batch.

    With probability 1/2 full context `(None, None)`; otherwise a chunk size uniform in
    `1..max_chunk_frames` with `left_chunks` as configured, or, when `dynamic_left_chunks`,
    uniform in `0..left_chunks` (`0..` however many chunks fit when `left_chunks` is None).
    Uses torch's RNG so that seeding and checkpointed RNG state reproduce it.
    """
    if torch.rand((), generator=generator).item() < 0.5:
        return None, None
    chunk = int(torch.randint(1, max_chunk_frames + 1, (), generator=generator))
    if not dynamic_left_chunks:
        return chunk, left_chunks
    max_left = left_chunks if left_chunks is not None else max(num_frames - 1, 0) // chunk
    return chunk, int(torch.randint(0, max_left + 1, (), generator=generator))
