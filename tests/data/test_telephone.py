"""The telephone channel: only the 300-3400 Hz band survives, μ-law codes, length and time kept,
deterministic; the loader applies it at the configured share and keeps every label (the
corpus's telephone twins: tests/data/test_noisy_twins.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.signal import welch

from mtspeech.data.augment import AugmentConfig, Augmenter, for_epoch
from mtspeech.data.manifest import read_manifest
from mtspeech.data.telephone import (BAND_HZ, MU_LAW_CHANNELS, PHONE_RATE, narrowband,
                                     telephone_channel)

RATE = 16000


def _noise(seconds=4.0, seed=0, rate=RATE):
    return 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))


def _band_db(freqs, power, low, high, ref):
    band = (freqs >= low) & (freqs < high)
    return 10 * np.log10(power[band].mean() / ref)


def test_channel_keeps_the_telephone_band_and_removes_the_rest():
    """White noise in: below 200 Hz and above 3700 Hz lie 30 dB under the passband (down to the
    μ-law's noise floor), 400-3200 Hz is flat within 3 dB, and under 2 % of the power is
    outside 300-3400 Hz."""
    y = telephone_channel(_noise(), RATE, level_dbov=-26.0)
    freqs, power = welch(y, RATE, nperseg=1024)
    ref = power[(freqs >= 400) & (freqs < 3200)].mean()
    assert _band_db(freqs, power, 0, 200, ref) < -30
    assert _band_db(freqs, power, 3700, RATE / 2, ref) < -30
    for low in range(400, 3200, 200):
        assert abs(_band_db(freqs, power, low, low + 200, ref)) < 3, low
    outside = (freqs < BAND_HZ[0]) | (freqs > BAND_HZ[1])
    assert power[outside].sum() < 0.02 * power.sum()


def test_channel_is_deterministic_keeps_length_and_sets_the_level():
    x = _noise(1.0)
    assert np.array_equal(telephone_channel(x, RATE, -20.0), telephone_channel(x, RATE, -20.0))
    assert not np.array_equal(telephone_channel(x, RATE, -20.0), telephone_channel(x, RATE, -30.0))
    for n in (8001, 8000, 7, 1, 0):  # odd lengths too: 8 kHz holds half a sample of them
        assert telephone_channel(x[:n], RATE, -26.0).shape == (n,)
    for rate in (8000, 22050, 44100):
        assert telephone_channel(_noise(0.5, rate=rate), rate).shape == (rate // 2,)
    for level in (-32.0, -20.0):
        y = narrowband(x, RATE, level)
        assert 10 * np.log10(np.mean(y.astype(np.float64) ** 2)) == pytest.approx(level, abs=0.5)
    y = narrowband(x, RATE, None)  # the level kept: white noise keeps the band's share of its power
    kept_db = 10 * np.log10(np.mean(y.astype(np.float64) ** 2) / np.mean(x**2))
    assert kept_db == pytest.approx(10 * np.log10((BAND_HZ[1] - BAND_HZ[0]) / (RATE / 2)), abs=0.5)
    with pytest.raises(ValueError, match="level_dbov"):
        narrowband(x, RATE, 3.0)


def test_narrowband_is_8_khz_mu_law():
    """At most 256 sample values (8-bit μ-law codes), quantised finely near 0 and coarsely near
    full scale, and clipped at full scale when the call level is too loud for the codec."""
    y = narrowband(_noise(2.0), RATE, -10.0)
    assert y.shape == (2 * PHONE_RATE,) and y.dtype == np.float32
    values = np.unique(y)
    assert len(values) <= MU_LAW_CHANNELS and np.abs(values).max() <= 1.0
    steps = np.diff(values)
    assert steps[len(steps) // 2] < steps[-1] / 10  # companding: small steps near 0, large ones at the top


def test_augmentation_sends_the_configured_share_through_the_channel_and_leaves_other_draws_alone():
    pool = [torch.zeros(RATE)]
    base = AugmentConfig(prob=0.5, reverb_prob=0.3)
    phoned = dataclasses.replace(base, telephone_prob=0.2, telephone_level_dbov=(-30.0, -22.0))
    plain, aug = (Augmenter(c, len(pool), pool.__getitem__, RATE) for c in (base, phoned))
    recipes = [aug.recipe(5, i) for i in range(2000)]
    levels = [r.telephone_level_dbov for r in recipes if r is not None and r.telephone_level_dbov is not None]
    assert 0.17 < len(levels) / 2000 < 0.23  # binomial: 0.2 ± 3.4 standard deviations
    assert all(-30.0 <= v <= -22.0 for v in levels)
    for i in range(300):  # noise, room, gain: as they were with the channel off
        a, b = plain.recipe(5, i), recipes[i]
        if a is not None:
            assert dataclasses.replace(b, telephone_level_dbov=None) == a
        elif b is not None:  # not augmented otherwise: the channel alone
            assert b.noise is None and b.rt60_s is None and b.gain_db is None and b.telephone_level_dbov
        assert not aug.changes_voice(5, i)  # the channel never takes the speaker label
    assert recipes == [Augmenter(phoned, len(pool), pool.__getitem__, RATE).recipe(5, i) for i in range(2000)]
    # only the channel (prob 0): the augmented audio is the channel's output at the drawn level
    only = Augmenter(AugmentConfig(prob=0.0, telephone_prob=1.0), len(pool), pool.__getitem__, RATE)
    wav = torch.from_numpy(_noise(1.0).astype(np.float32))
    level = only.recipe(2, 7).telephone_level_dbov
    expected = telephone_channel(wav.numpy().astype(np.float64), RATE, level)
    assert torch.allclose(only(wav, seed=2, index=7), torch.from_numpy(expected), atol=1e-6)
    late = AugmentConfig(telephone_prob=1.0, start_epoch=3)
    assert for_epoch(late, 2) is None and for_epoch(late, 3) is late  # the augmentation's start holds it back


def test_config_rejects_bad_telephone_values_with_the_key(tmp_path):
    from mtspeech.experiment import load_experiment

    for bad, key in (({"telephone_prob": 1.5}, "telephone_prob"), ({"telephone_prob": -0.1}, "telephone_prob"),
                     ({"telephone_level_dbov": (-10.0, 3.0)}, "telephone_level_dbov"),
                     ({"telephone_level_dbov": (-10.0, -20.0)}, "telephone_level_dbov")):
        with pytest.raises(ValueError, match=key):
            AugmentConfig(**bad)
    with pytest.raises(ValueError, match="telephone_prob"):
        load_experiment("recipes/synthetic/demo.yaml", [f"exp_dir={tmp_path}", "data.augment.telephone_prob=2"])
    exp = load_experiment("recipes/synthetic/demo.yaml", [f"exp_dir={tmp_path}"])
    assert 0 < exp.data.augment.telephone_prob < 1  # the demo trains on some telephone audio


def test_dataset_keeps_every_label_of_a_phoned_utterance(prepared_manifests):
    from mtspeech.data.dataset import UtteranceDataset

    utts = read_manifest(prepared_manifests["train"])[:4]
    cfg = AugmentConfig(prob=0.0, telephone_prob=1.0)
    phoned = UtteranceDataset(utts, {}, train=True, speed_factors=None, seed=3, augment=cfg)
    plain = UtteranceDataset(utts, {}, train=True, speed_factors=None, seed=3)
    for i, u in enumerate(utts):
        a, b = plain[i], phoned[i]
        assert b.utt == u and b.wav.shape == a.wav.shape and not torch.equal(a.wav, b.wav)
