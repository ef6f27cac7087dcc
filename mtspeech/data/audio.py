"""Reading audio: files and uploaded bytes → mono float32 waveforms at the model's rate.

Decoding goes through `soundfile` (libsndfile: WAV, FLAC, OGG, MP3, ...), not
`torchaudio.load`, which needs torchcodec. Every failure — missing, empty, corrupt or
undecodable input — is one `AudioError` naming the file and the reason, so the dataset can
log and skip a bad utterance instead of killing a training run. Other rates are resampled with
the one resampler (`mtspeech.data.resample`, soxr), the filter the server's streams use too.
"""

from __future__ import annotations

import io
import os

import numpy as np
import soundfile
import torch

from mtspeech.data.geometry import SAMPLE_RATE
from mtspeech.data.resample import resample


class AudioError(ValueError):
    """Audio that cannot be used. `path` names the file ("<bytes>" for uploads)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (AudioError, (self.path, self.reason))


def load_audio(path: str | os.PathLike, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read an audio file → FloatTensor (S,) mono at `target_rate` Hz.

    Channels are averaged; other rates are resampled with `mtspeech.data.resample.resample`.
    Raises `AudioError(path, reason)` if the file is missing, unreadable or has no samples.
    """
    if not os.path.isfile(path):
        raise AudioError(path, "no such file")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, OSError, EOFError) as e:
        raise AudioError(path, f"cannot decode audio ({e})") from None
    return _finish(data, rate, target_rate, path)


def decode_audio_bytes(data: bytes, target_rate: int = SAMPLE_RATE, name: str = "<bytes>") -> torch.Tensor:
    """Decode an encoded audio file held in memory (an upload) → FloatTensor (S,) at `target_rate`.

    Same conversions and errors as `load_audio`; `name` is what error messages call the data.
    """
    if not data:
        raise AudioError(name, "empty upload (0 bytes)")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, OSError, EOFError) as e:
        raise AudioError(name, f"cannot decode audio ({e}); send WAV, FLAC or OGG") from None
    return _finish(samples, rate, target_rate, name)


def _finish(data: np.ndarray, rate: int, target_rate: int, path: str | os.PathLike) -> torch.Tensor:
    """(S, C) float32 at `rate` → (S,) mono at `target_rate`, checked for content."""
    if data.size == 0:
        raise AudioError(path, "contains no samples")
    mono = np.ascontiguousarray(data.mean(axis=1), dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AudioError(path, "contains NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(resample(mono, int(rate), int(target_rate))))
