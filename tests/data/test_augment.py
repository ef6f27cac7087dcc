"""Loader augmentation: labels stay aligned, the SNR and RT60 are what was asked, every draw is
a pure function of (seed, index), babble comes from the same split only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtspeech.data.augment import (AugmentConfig, Augmenter, add_at_snr, colored_noise, room_impulse_response,
                                   speech_mask)
from mtspeech.data.dataset import UtteranceDataset
from mtspeech.data.manifest import read_manifest

RATE = 16000


def _tone_with_pause(seconds=2.0):
    """A 300 Hz tone in [0.5, 1.0) s and [1.4, 1.8) s, silence elsewhere; its segments."""
    t = np.arange(int(seconds * RATE)) / RATE
    speech = [[0.5, 1.0], [1.4, 1.8]]
    x = np.zeros_like(t)
    for s, e in speech:
        on = (t >= s) & (t < e)
        x[on] = 0.3 * np.sin(2 * np.pi * 300 * t[on])
    return torch.from_numpy(x.astype(np.float32)), speech


def _pool(n=6, seconds=1.0, seed=0):
    g = np.random.default_rng(seed)
    return [torch.from_numpy((0.1 * g.standard_normal(int(seconds * RATE))).astype(np.float32)) for _ in range(n)]


def test_same_seed_and_index_give_the_same_audio_and_others_differ():
    pool = _pool()
    aug = Augmenter(AugmentConfig(prob=1.0, reverb_prob=0.5), len(pool), pool.__getitem__, RATE)
    wav, speech = _tone_with_pause()
    a = aug(wav, seed=7, index=3, speech=speech)
    again = Augmenter(AugmentConfig(prob=1.0, reverb_prob=0.5), len(pool), pool.__getitem__, RATE)
    assert torch.equal(a, again(wav, seed=7, index=3, speech=speech))  # a fresh object: as after a resume
    assert not torch.equal(a, aug(wav, seed=7, index=4, speech=speech))
    assert not torch.equal(a, aug(wav, seed=8, index=3, speech=speech))
    assert a.shape == wav.shape and a.dtype == torch.float32


def test_speech_stays_in_its_segments_under_noise_and_reverberation():
    """The frames of a segment before and after are the same frames: the envelope of the
    augmented audio lines up with the clean one (best lag 0) and stays loudest inside the segments."""
    wav, speech = _tone_with_pause()
    pool = _pool()
    cfg = AugmentConfig(prob=1.0, noise=("pink",), snr_db=(20.0, 20.0), reverb_prob=1.0, rt60_s=(0.3, 0.3),
                        gain_db=(0.0, 0.0))
    out = Augmenter(cfg, len(pool), pool.__getitem__, RATE)(wav, seed=1, index=0, speech=speech).numpy()
    frame = RATE // 100  # 10 ms
    env = lambda x: np.sqrt((x[: len(x) // frame * frame].reshape(-1, frame) ** 2).mean(1))  # noqa: E731
    clean, noisy = env(wav.numpy()), env(out)
    lags = range(-20, 21)
    corr = [np.corrcoef(np.roll(noisy, lag), clean)[0, 1] for lag in lags]
    assert list(lags)[int(np.argmax(corr))] == 0
    inside = speech_mask(len(clean), [[s * 100, e * 100] for s, e in speech], 1)
    assert noisy[inside].mean() > 3 * noisy[~inside].mean()


@pytest.mark.parametrize("kind", ["white", "pink", "brown"])
def test_noise_is_added_at_the_requested_snr_over_the_speech_frames(kind):
    wav, speech = _tone_with_pause()
    x = wav.numpy().astype(np.float64)
    noise = colored_noise(kind, len(x), np.random.default_rng(0))
    mask = speech_mask(len(x), speech, RATE)
    y = add_at_snr(x, noise, 10.0, mask)
    snr = 10 * math.log10(np.mean(x[mask] ** 2) / np.mean((y - x) ** 2))
    assert snr == pytest.approx(10.0, abs=1e-6)


def test_colored_noise_has_the_slope_it_claims():
    n = colored_noise("pink", 2**16, np.random.default_rng(0))
    power = np.abs(np.fft.rfft(n)) ** 2
    f = np.arange(len(power))
    band = lambda lo, hi: power[(f >= lo) & (f < hi)].mean()  # noqa: E731
    assert 10 * math.log10(band(100, 200) / band(1000, 2000)) == pytest.approx(10.0, abs=1.0)  # 1/f: 10 dB/decade


@pytest.mark.parametrize("rt60", [0.2, 0.5, 0.8])
def test_room_impulse_responses_decay_at_the_requested_rt60(rt60):
    """Schroeder backward integration: the -5 to -35 dB slope, extrapolated to -60 dB."""
    rir = room_impulse_response(rt60, RATE, np.random.default_rng(3))
    edc = np.cumsum((rir[1:] ** 2)[::-1])[::-1]  # reverberant tail only (the direct path is a spike)
    edc_db = 10 * np.log10(edc / edc[0])
    t = np.arange(len(edc_db)) / RATE
    fit = (edc_db <= -5) & (edc_db >= -35)
    slope = np.polyfit(t[fit], edc_db[fit], 1)[0]
    assert -60 / slope == pytest.approx(rt60, rel=0.1)


def test_babble_draws_from_the_same_split_only():
    pool = _pool(8)
    asked = []

    def load(i):
        asked.append(i)
        return pool[i]

    aug = Augmenter(AugmentConfig(prob=1.0, noise=("babble",), reverb_prob=0.0), len(pool), load, RATE)
    wav, speech = _tone_with_pause()
    for index in range(8):
        asked.clear()
        aug(wav, seed=0, index=index, speech=speech)
        assert 3 <= len(asked) <= 6 and index not in asked and all(0 <= i < 8 for i in asked)


def test_dataset_augments_training_only_and_keeps_every_label(prepared_manifests):
    """Through UtteranceDataset: the audio changes, the targets (VAD frames included) do not."""
    from mtspeech.tasks.vad import VADConfig, VADTask

    utts = read_manifest(prepared_manifests["train"])[:6]
    tasks = {"vad": VADTask(VADConfig(), 8, {})}
    cfg = AugmentConfig(prob=1.0)
    plain = UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=5)
    noisy = UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=5, augment=cfg)
    dev = UtteranceDataset(utts, tasks, train=False, speed_factors=None, seed=5, augment=cfg)
    for i in range(len(utts)):
        a, b, c = plain[i], noisy[i], dev[i]
        assert not torch.equal(a.wav, b.wav) and torch.equal(a.wav, c.wav)
        assert a.utt == b.utt  # speaker, text, phones, speech segments: unchanged
    batch_a = plain.collate([plain[i] for i in range(len(utts))])
    batch_b = noisy.collate([noisy[i] for i in range(len(utts))])
    for name in batch_a.targets:
        assert torch.equal(batch_a.targets[name].values, batch_b.targets[name].values)
