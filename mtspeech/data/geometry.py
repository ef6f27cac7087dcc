"""Frame geometry: how samples become feature frames and encoder frames, in one object.

Every number that follows from the front end lives here and is read, never typed again:

    sample_rate       16000 Hz: every input is resampled to it (`mtspeech.data.resample`)
    window_samples    400 (25 ms): the filterbank's window; hop_samples 160 (10 ms): its hop.
                      Feature frame i covers samples [hop i, hop i + window) (no centre padding)
    subsampling       4: the encoder's conv front end (two k=3 s=2 convolutions,
                      `mtspeech.encoders.subsampling`); right_context 6: the feature frames an
                      encoder frame reads beyond its first one (frame j reads 4j .. 4j+6)

and what follows from them: `frame_shift_s` (40 ms: one encoder frame), the streaming chunk
window (`chunk_window(c)`: 4c+3 feature frames every 4c), frame counts and the centres of the
encoder frames' receptive windows (the VAD labels). `MultiTaskModel.geometry` builds it from
the model's feature config and encoder (`FrameGeometry.of`); the streaming recognizer, export
and the server read `recognizer.geometry`. The defaults are the pinned front end
(`FeatureConfig`'s defaults and the conv 4x encoders, the only kind there is).

This module imports nothing (not even numpy): the corpus tools that never load torch read it.
Methods that count frames take an int or an integer tensor / array alike.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Any

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400
HOP_SAMPLES = 160
SUBSAMPLING = 4
RIGHT_CONTEXT = 6


def _as_count(x):
    """A Python int for integer scalars (numpy's included); tensors and arrays as they are."""
    return int(x) if isinstance(x, numbers.Integral) else x


def _floor_at_zero(x):
    """max(0, x) for an int, elementwise for a tensor (`clamp_min`) or a numpy array (`clip`)."""
    if isinstance(x, int):
        return max(0, x)
    return x.clamp_min(0) if hasattr(x, "clamp_min") else x.clip(min=0)


@dataclass(frozen=True)
class FrameGeometry:
    """The front end's frame arithmetic: samples → feature frames → encoder frames.

    Fields: `sample_rate` (Hz), `window_samples` and `hop_samples` (the filterbank's window and
    hop), `subsampling` (feature frames per encoder frame) and `right_context` (feature frames
    an encoder frame reads beyond its first).
    """

    sample_rate: int = SAMPLE_RATE
    window_samples: int = WINDOW_SAMPLES
    hop_samples: int = HOP_SAMPLES
    subsampling: int = SUBSAMPLING
    right_context: int = RIGHT_CONTEXT

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if f.name == "right_context" else 1):
                raise ValueError(f"FrameGeometry.{f.name}={value!r}: expected a positive integer")

    @classmethod
    def of(cls, features: Any, encoder: Any) -> "FrameGeometry":
        """The geometry of a feature config (`FeatureConfig`: `sample_rate`, `win_length`,
        `hop_length`) feeding an encoder (`subsampling`, `right_context` attributes)."""
        return cls(int(features.sample_rate), int(features.win_length), int(features.hop_length),
                   int(encoder.subsampling), int(encoder.right_context))

    # -- durations ------------------------------------------------------------------------------

    @property
    def hop_s(self) -> float:
        """Seconds between feature frames (0.01)."""
        return self.hop_samples / self.sample_rate

    @property
    def frame_shift_samples(self) -> int:
        """Samples between encoder frames (640)."""
        return self.subsampling * self.hop_samples

    @property
    def frame_shift_s(self) -> float:
        """Seconds between encoder frames (0.04): word times, endpointing, VAD events."""
        return self.frame_shift_samples / self.sample_rate

    @property
    def receptive_field_samples(self) -> int:
        """Samples one encoder frame reads: `right_context` hops plus one window (1360)."""
        return self.right_context * self.hop_samples + self.window_samples

    # -- frame counts ---------------------------------------------------------------------------

    def feature_frames(self, num_samples):
        """Feature frames of `num_samples` samples (int, or an integer tensor / array of any shape):
        `0 if num_samples < window else (num_samples - window) // hop + 1`."""
        n = _as_count(num_samples)
        return _floor_at_zero((n - self.window_samples) // self.hop_samples + 1)

    def subsampled_frames(self, num_feature_frames):
        """Encoder frames of `num_feature_frames` feature frames: one per full receptive field
        every `subsampling` frames, `(T - right_context - 1) // subsampling + 1`, floored at 0
        (equal to the conv's `((T-1)//2 - 1)//2`: tests/data/test_geometry.py)."""
        t = _as_count(num_feature_frames)
        return _floor_at_zero((t - self.right_context - 1) // self.subsampling + 1)

    def encoder_frames(self, num_samples):
        """Encoder frames of `num_samples` samples (int, or an integer tensor / array)."""
        return self.subsampled_frames(self.feature_frames(num_samples))

    def samples_for_feature_frames(self, n: int) -> int:
        """Fewest samples that make `n` feature frames (0 for n = 0)."""
        return 0 if n <= 0 else (n - 1) * self.hop_samples + self.window_samples

    def frame_centres_s(self, frame_index):
        """Centre, in seconds, of encoder frame `frame_index`'s receptive window (an int, or a
        float tensor / array of indices): `(640 i + 680) / 16000` with the defaults."""
        return (frame_index * self.frame_shift_samples + self.receptive_field_samples / 2) / self.sample_rate

    # -- streaming ------------------------------------------------------------------------------

    def chunk_window(self, chunk_frames: int) -> tuple[int, int]:
        """(window, stride) in feature frames for chunks of `chunk_frames` encoder frames:
        (4c+3, 4c). The window is the stride's frames plus what the last output frame reads
        beyond it (`right_context - subsampling + 1` = 3); consecutive windows overlap by that."""
        if not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be an integer >= 1, got {chunk_frames!r}")
        stride = self.subsampling * chunk_frames
        return stride + self.right_context - self.subsampling + 1, stride
