"""Acoustic front end: log-mel filterbank, global CMVN, SpecAugment, speed perturbation.

The filterbank is pinned in docs/interfaces.md and `mtspeech.data.geometry`: 25 ms windows
every 10 ms, no centre padding, so feature frame `i` covers samples `[hop i, hop i + window)`
and depends on nothing else. That is what lets streaming featurize audio piece by piece
(`mtspeech.streaming.features`) and get exactly the frames the batched `Fbank` computes on
the whole signal. Features run inside the model (on its
device), so training, evaluation and streaming share one filterbank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torchaudio
from torch import nn

from mtspeech.data.geometry import HOP_SAMPLES, SAMPLE_RATE, WINDOW_SAMPLES, FrameGeometry
from mtspeech.data.resample import resample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel filterbank settings. The defaults are the pinned front end of
    `mtspeech.data.geometry` (change them only with care: the VAD labels assume them, and the
    model's `geometry` is built from these fields)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = WINDOW_SAMPLES
    win_length: int = WINDOW_SAMPLES
    hop_length: int = HOP_SAMPLES
    n_mels: int = 80
    log_eps: float = 1e-6


def feature_frames(num_samples, win_length: int = WINDOW_SAMPLES, hop_length: int = HOP_SAMPLES):
    """Number of feature frames for `num_samples` samples (an int or a long tensor of any shape):
    `FrameGeometry.feature_frames` with this window and hop."""
    return FrameGeometry(window_samples=win_length, hop_samples=hop_length).feature_frames(num_samples)


class Fbank(nn.Module):
    """Batched log-mel filterbank.

    forward(wav (B,S) float, wav_lens (B,) long) → (feats (B,T,n_mels), feat_lens (B,)),
    `T = feature_frames(S)`; frames at or beyond a row's `feat_lens` are zero.
    Always computed in float32 (autocast is disabled inside: the STFT needs it).
    """

    def __init__(self, cfg: FeatureConfig = FeatureConfig()):
        super().__init__()
        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length,
            hop_length=cfg.hop_length, n_mels=cfg.n_mels, center=False, power=2.0,
        )

    @property
    def dim(self) -> int:
        return self.cfg.n_mels

    def num_frames(self, num_samples):
        """`feature_frames` with this front end's window and hop."""
        return feature_frames(num_samples, self.cfg.win_length, self.cfg.hop_length)

    def forward(self, wav: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"Fbank expects wav of shape (B,S), got {tuple(wav.shape)}")
        b, s = wav.shape
        t = self.num_frames(s)
        feat_lens = self.num_frames(wav_lens.to(torch.long)).to(wav.device)
        if t == 0:  # STFT without centre padding cannot run on fewer than n_fft samples
            return wav.new_zeros(b, 0, self.cfg.n_mels, dtype=torch.float32), feat_lens
        with torch.autocast(device_type=wav.device.type, enabled=False):
            spec = self.mel(wav.float())  # (B, n_mels, T)
            feats = torch.log(spec + self.cfg.log_eps).transpose(1, 2)  # (B, T, n_mels)
        valid = torch.arange(t, device=wav.device)[None, :] < feat_lens[:, None]
        return feats.masked_fill(~valid[:, :, None], 0.0), feat_lens


class GlobalCMVN(nn.Module):
    """Global mean/variance normalisation: feats (B,T,F) → (feats - mean) / std.

    Buffers `mean (F,)` and `std (F,)` start at identity and are saved with the model.
    """

    def __init__(self, n_mels: int = 80):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Install fitted statistics (each (F,))."""
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"CMVN stats must be {tuple(self.mean.shape)}, got {tuple(mean.shape)}/{tuple(std.shape)}")
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std


def fit_cmvn(batches: Iterable, min_std: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (each (F,)) over all valid frames of `batches`.

    Each item is either `(feats (B,T,F), feat_lens (B,))` — padded frames are ignored — or a
    plain `feats (T,F)` tensor. Accumulates in float64; `std` is floored at `min_std`.
    """
    total = total_sq = None
    count = 0
    for item in batches:
        if isinstance(item, (tuple, list)):
            feats, lens = item
            valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < lens.to(feats.device)[:, None]
            frames = feats[valid]
        else:
            frames = item
        frames = frames.detach().double().reshape(-1, frames.shape[-1]).cpu()
        if total is None:
            total = torch.zeros(frames.shape[1], dtype=torch.float64)
            total_sq = torch.zeros_like(total)
        total += frames.sum(0)
        total_sq += (frames**2).sum(0)
        count += frames.shape[0]
    if count == 0:
        raise ValueError("fit_cmvn: no feature frames to fit the normalisation on")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0).sqrt().clamp_min(min_std)
    return mean.float(), std.float()


def cmvn_from_utterances(utts: Sequence, fbank: Fbank, max_utterances: int = 300,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_cmvn` over a seeded random sample of manifest utterances; unreadable audio is skipped."""
    from mtspeech.data.audio import AudioError, load_audio

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(utts), generator=g)[:max_utterances].tolist()

    def feats():
        for i in idx:
            try:
                wav = load_audio(utts[i].audio, fbank.cfg.sample_rate)
            except AudioError as e:
                log.warning("CMVN: skipping unreadable audio %s", e)
                continue
            with torch.no_grad():
                yield fbank(wav[None], torch.tensor([wav.numel()]))

    return fit_cmvn(feats())


@dataclass(frozen=True)
class SpecAugmentConfig:
    """Masks per utterance (WeNet defaults). A time mask is at most `max_time_width` frames
    and at most `max_time_ratio` of the utterance, so short utterances keep their content."""

    freq_masks: int = 2
    max_freq_width: int = 10
    time_masks: int = 2
    max_time_width: int = 50
    max_time_ratio: float = 0.2
    fill_value: float = 0.0  # after CMVN, 0 is the mean


class SpecAugment(nn.Module):
    """Frequency and time masking, in `train()` mode only; lengths-aware.

    forward(feats (B,T,F), feat_lens (B,)) → feats (B,T,F). Time masks fall inside each
    row's valid frames. (speechbrain's SpectrogramDrop takes no lengths, so it could mask
    padding instead of speech; this is the short own version.)
    """

    def __init__(self, cfg: SpecAugmentConfig = SpecAugmentConfig()):
        super().__init__()
        self.cfg = cfg

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return feats
        b, t, f = feats.shape
        cfg = self.cfg
        lens = feat_lens.to(feats.device).long()
        mask = torch.zeros(b, t, f, dtype=torch.bool, device=feats.device)
        freq = torch.arange(f, device=feats.device)
        for _ in range(cfg.freq_masks):
            width = torch.randint(0, cfg.max_freq_width + 1, (b,), device=feats.device).clamp_max(f)
            start = (torch.rand(b, device=feats.device) * (f - width + 1)).long()
            mask |= ((freq[None, :] >= start[:, None]) & (freq[None, :] < (start + width)[:, None]))[:, None, :]
        time = torch.arange(t, device=feats.device)
        max_w = torch.minimum(torch.full_like(lens, cfg.max_time_width), (lens * cfg.max_time_ratio).long())
        for _ in range(cfg.time_masks):
            width = (torch.rand(b, device=feats.device) * (max_w + 1)).long()
            start = (torch.rand(b, device=feats.device) * (lens - width + 1).clamp_min(1)).long()
            mask |= ((time[None, :] >= start[:, None]) & (time[None, :] < (start + width)[:, None]))[:, :, None]
        return feats.masked_fill(mask, cfg.fill_value)


def speed_perturb(wav: torch.Tensor, factor: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """wav (S,) or (C, S) → (..., round(S/factor)): plays `factor`× faster (pitch
    shifts with it, as in Kaldi).

    The resample trick: treat the signal as sampled at `factor · sample_rate` and resample it
    to `sample_rate`, with the one resampler (`mtspeech.data.resample`). Factor 1 returns the
    input unchanged.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return wav
    if wav.dim() not in (1, 2):
        raise ValueError(f"speed_perturb expects wav of shape (S,) or (C,S), got {tuple(wav.shape)}")
    x = wav.detach().cpu().float().numpy()
    y = resample(x.T, int(round(sample_rate * factor)), sample_rate).T  # soxr takes channels last
    return torch.from_numpy(np.ascontiguousarray(y)).to(device=wav.device, dtype=wav.dtype)
