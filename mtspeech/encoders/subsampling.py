"""Conv 4x subsampling front end and its streaming window arithmetic.

Two Conv2d (kernel 3, stride 2, ReLU) with no padding in time or frequency, then a linear
projection to the model dimension. With no time padding an output frame depends only on real
input frames, so padding a batch or cutting the input into windows never changes it:

    output frame j reads feature frames 4j .. 4j+6   (receptive field 7, stride 4)
    T' = ((T - 1) // 2 - 1) // 2   (0 when T < 7)

Streaming bookkeeping (WeNet's `decoding_window` / `stride`): a chunk of `c` output frames
starting at output frame `j0` reads feature frames `[4 j0, 4 j0 + 4c + 3)`, i.e. `4c + 3`
frames: the `4c`-frame stride window of its outputs plus `RIGHT_CONTEXT - 3 = 3` more
(`RIGHT_CONTEXT = 6` counts the frames beyond an output frame's first one). The next chunk
starts `4c` feature frames later, so consecutive windows overlap by 3 frames. The last
window of an utterance may be shorter; it yields `((n - 1) // 2 - 1) // 2` outputs, and the
per-window counts add up to the full-utterance `T'`.
"""

from __future__ import annotations

import torch
from torch import nn

# The front end's stride and reach are the frame geometry's (`mtspeech.data.geometry`, where
# the chunk window is computed): this module builds the convolutions that have them.
from mtspeech.data.geometry import RIGHT_CONTEXT, FrameGeometry

_GEOMETRY = FrameGeometry()


def subsampled_lens(lens: torch.Tensor) -> torch.Tensor:
    """Feature-frame counts (B,) → encoder-frame counts (B,): `((T-1)//2 - 1)//2`, floored at 0."""
    return ((lens - 1).div(2, rounding_mode="floor") - 1).div(2, rounding_mode="floor").clamp(min=0)


def chunk_window(chunk_frames: int) -> tuple[int, int]:
    """(window, stride) in feature frames for chunks of `chunk_frames` encoder frames: (4c+3, 4c)
    (`FrameGeometry.chunk_window`)."""
    return _GEOMETRY.chunk_window(chunk_frames)


def chunk_windows(num_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """Feature-frame windows `[start, end)` a streaming caller feeds to `forward_chunk`.

    Full windows of `4c+3` frames every `4c` frames, then one shorter final window holding
    whatever is left (dropped when it is too short to yield an output frame).
    """
    window, stride = chunk_window(chunk_frames)
    out = []
    start = 0
    while start + window <= num_frames:
        out.append((start, start + window))
        start += stride
    if num_frames - start >= RIGHT_CONTEXT + 1:
        out.append((start, num_frames))
    return out


class Conv2dSubsampling4(nn.Module):
    """(B, T, F) log-mel → (B, T', D) with T' = ((T-1)//2 - 1)//2; no time padding."""

    def __init__(self, input_dim: int, dim: int, channels: int | None = None):
        super().__init__()
        # `channels` (default: dim) sets the conv width: the second conv costs channels² per
        # output position, so a narrow front end is what makes small models fast on a CPU.
        channels = channels or dim
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        freq = ((input_dim - 1) // 2 - 1) // 2
        if freq < 1:
            raise ValueError(f"input_dim {input_dim} is too small for two stride-2 convolutions (need >= 7)")
        self.proj = nn.Linear(channels * freq, dim)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,T,F), x_lens (B,) → h (B,T',D), h_lens (B,). Frames past h_lens are not meaningful."""
        b, t, _ = x.shape
        out_t = int(subsampled_lens(torch.tensor(t)))
        lens = subsampled_lens(x_lens)
        if out_t == 0:  # too short for one receptive field: convolutions would fail
            return x.new_zeros(b, 0, self.proj.out_features), lens
        h = self.conv(x.unsqueeze(1))  # (B, D, T', F')
        h = h.permute(0, 2, 1, 3).flatten(2)  # (B, T', D*F')
        return self.proj(h), lens
