"""A stream's audio between `accept` and the encoder: resampling to the model's rate, the samples
not yet featurized, and the feature frames not yet consumed; plus the batched incremental fbank.

Frame arithmetic (docs/interfaces.md, `FrameGeometry`): feature frame i reads samples
[hop i, hop i + window), so
frames computed from a prefix of the audio equal those of the whole signal, and a buffer can
featurize its samples in any pieces. It featurizes only what the next encoder window lacks: a
client faster than real time leaves raw samples buffered, not an ever larger feature tensor.

Thread model (as `StreamingRecognizer`'s): `push` and `frames_available` may run on one thread
while `featurize`, `window`, `advance`, `flush` and `take_rest` run on another; the buffer's
lock guards what they share. Only the second thread removes samples or frames.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Sequence

import numpy as np
import torch

from mtspeech.data.geometry import FrameGeometry
from mtspeech.data.resample import StreamResampler

__all__ = ["FeatureBuffer", "featurize"]

# model.features: wav (B, S), wav_lens (B,) -> feats (B, T, F), feat_lens (B,)
Features = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class FeatureBuffer:
    """One stream's audio from arrival to the encoder, at `geometry.sample_rate` once resampled
    (`geometry`: the model's; the default is the pinned front end)."""

    def __init__(self, sample_rate: int, geometry: FrameGeometry = FrameGeometry()) -> None:
        self.sample_rate = sample_rate
        self.geometry = geometry
        self.resampler = (StreamResampler(sample_rate, geometry.sample_rate)
                          if sample_rate != geometry.sample_rate else None)
        self.samples_accepted = 0  # at the model's rate
        self._lock = threading.Lock()
        # Resampled samples not yet featurized, as pushed (no copying per step); the first starts at
        # the next feature frame's first sample.
        self._pending: deque[np.ndarray] = deque()
        self._pending_len = 0
        self._feats: torch.Tensor | None = None  # (T, F) frames not yet consumed

    def push(self, x: np.ndarray) -> None:
        """Append float32 samples (N,) at `sample_rate`, already checked (`check_samples`); the
        buffer keeps `x`, so pass a copy the caller will not reuse."""
        if self.resampler is not None:
            x = self.resampler.push(x)
            if not np.isfinite(x).all():  # cannot happen for bounded input; never feed it on
                raise ValueError(f"resampling from {self.sample_rate} Hz gave non-finite samples; "
                                 "the stream is unusable, start a new one")
        self._append(x)

    def flush(self) -> None:
        """End of audio: append what the resampler still holds (nothing at the model's rate)."""
        if self.resampler is not None:
            self._append(self.resampler.flush())

    def _append(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        with self._lock:
            self._pending.append(x)
            self._pending_len += len(x)
            self.samples_accepted += len(x)

    @property
    def frame_count(self) -> int:
        """Feature frames computed and not yet consumed."""
        feats = self._feats
        return 0 if feats is None else feats.shape[0]

    def frames_available(self) -> int:
        """Frames not yet consumed: computed ones plus those the pending samples complete."""
        with self._lock:
            return self.frame_count + self.geometry.feature_frames(self._pending_len)

    @property
    def buffered_seconds(self) -> float:
        """Audio accepted but not consumed, in seconds: pending samples plus unconsumed frames
        (one hop each)."""
        with self._lock:
            return (self._pending_len + self.frame_count * self.geometry.hop_samples) / self.geometry.sample_rate

    def missing_samples(self, window_frames: int) -> np.ndarray:
        """The pending samples (S,) of the frames a `window_frames` window still lacks (as many
        as are complete; S = 0 if none): `geometry.feature_frames(S)` frames read exactly these."""
        with self._lock:
            n = min(self.geometry.feature_frames(self._pending_len), max(0, window_frames - self.frame_count))
            if n == 0:
                return np.zeros(0, dtype=np.float32)
            need, parts = self.geometry.samples_for_feature_frames(n), []
            for chunk in self._pending:
                if need <= 0:
                    break
                parts.append(chunk[:need])
                need -= len(parts[-1])
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def add_frames(self, new: torch.Tensor) -> None:
        """Append frames (n, F) computed from `missing_samples` and drop the n hops they cover."""
        n = new.shape[0]
        with self._lock:  # frames and samples change together for `frames_available`
            self._feats = new.clone() if self._feats is None else torch.cat([self._feats, new])
            drop = n * self.geometry.hop_samples
            self._pending_len -= drop
            while drop > 0:
                head = self._pending[0]
                if len(head) <= drop:
                    self._pending.popleft()
                    drop -= len(head)
                else:
                    self._pending[0] = head[drop:]
                    drop = 0

    def window(self, n: int) -> torch.Tensor:
        """The first `n` unconsumed frames (n, F); n <= `frame_count`."""
        if self.frame_count < n:
            raise ValueError(f"window of {n} frames asked, {self.frame_count} computed")
        return self._feats[:n]

    def advance(self, n: int) -> None:
        """Consume the first `n` frames (the encoder's stride)."""
        with self._lock:  # a copy: a view would keep the whole window alive
            self._feats = self._feats[n:].clone()

    def take_rest(self) -> torch.Tensor | None:
        """End of audio: the unconsumed frames (T, F) (None if none), leaving none."""
        with self._lock:
            rest, self._feats = self._feats, None
        return rest


@torch.inference_mode()
def featurize(buffers: Sequence[FeatureBuffer], window_frames: int, features: Features,
              device: torch.device | str = "cpu") -> None:
    """Featurize what each buffer's next `window_frames` window lacks, in one batched
    `features` call (rows right-padded). At most one window per buffer however much audio is
    pending: a client faster than real time must not turn minutes of samples into features."""
    wavs = [b.missing_samples(window_frames) for b in buffers]
    todo = [i for i, w in enumerate(wavs) if len(w)]
    if not todo:
        return
    lens = torch.tensor([len(wavs[i]) for i in todo], dtype=torch.long)
    batch = torch.zeros(len(todo), int(lens.max()))
    for row, i in enumerate(todo):
        batch[row, : len(wavs[i])] = torch.from_numpy(wavs[i])
    feats, _ = features(batch.to(device), lens.to(device))
    for row, i in enumerate(todo):
        buffers[i].add_frames(feats[row, : buffers[i].geometry.feature_frames(len(wavs[i]))])
