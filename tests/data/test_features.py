"""Audio loading and the acoustic front end: fbank, streaming fbank, CMVN, SpecAugment, speed."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from mtspeech.data.audio import AudioError, decode_audio_bytes, load_audio
from mtspeech.data.features import (
    Fbank,
    GlobalCMVN,
    SpecAugment,
    SpecAugmentConfig,
    cmvn_from_utterances,
    feature_frames,
    fit_cmvn,
    speed_perturb,
)
from mtspeech.data.manifest import Utterance


def sine(seconds: float, rate: int = 16000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.5 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


# ---------------------------------------------------------------- audio loading
def test_load_audio_mixes_down_and_resamples(tmp_path):
    stereo = np.stack([sine(0.5, 8000), sine(0.5, 8000, 300.0)], axis=1)
    soundfile.write(tmp_path / "a.wav", stereo, 8000)
    wav = load_audio(tmp_path / "a.wav")
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert wav.numel() == 8000  # 0.5 s at 16 kHz
    soundfile.write(tmp_path / "b.flac", sine(0.25), 16000)
    b = load_audio(tmp_path / "b.flac")
    assert b.numel() == 4000
    assert torch.allclose(b, torch.from_numpy(sine(0.25)), atol=1e-4)  # 16-bit FLAC


def test_audio_errors_name_file_and_reason(tmp_path):
    with pytest.raises(AudioError, match="no such file") as e:
        load_audio(tmp_path / "missing.wav")
    assert isinstance(e.value, ValueError) and e.value.path.endswith("missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioError, match="bad.wav: cannot decode"):
        load_audio(tmp_path / "bad.wav")
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(tmp_path / "empty.wav")


def test_decode_audio_bytes():
    buf = io.BytesIO()
    soundfile.write(buf, sine(0.5, 8000), 8000, format="WAV")
    assert decode_audio_bytes(buf.getvalue(), 16000).numel() == 8000
    with pytest.raises(AudioError, match="empty"):
        decode_audio_bytes(b"")
    with pytest.raises(AudioError, match="cannot decode"):
        decode_audio_bytes(b"not audio at all" * 20)


# ---------------------------------------------------------------- fbank
def test_feature_frames():
    assert [feature_frames(n) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]
    n = torch.tensor([0, 100, 399, 400, 560, 16000])
    assert feature_frames(n).tolist() == [feature_frames(int(x)) for x in n]


def test_fbank_matches_pinned_definition_and_is_padding_invariant():
    torch.manual_seed(0)
    fbank = Fbank()
    a, b = torch.randn(4000) * 0.1, torch.randn(2500) * 0.1
    wav = torch.zeros(2, 4000)
    wav[0], wav[1, :2500] = a, b
    feats, lens = fbank(wav, torch.tensor([4000, 2500]))
    assert feats.shape == (2, feature_frames(4000), 80) and lens.tolist() == [23, 14]
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, win_length=400, hop_length=160,
                                               n_mels=80, center=False, power=2.0)
    ref = torch.log(mel(a) + 1e-6).T
    assert torch.allclose(feats[0], ref, atol=1e-5)
    alone, _ = fbank(b[None], torch.tensor([2500]))
    assert torch.allclose(feats[1, :14], alone[0], atol=1e-5)
    assert (feats[1, 14:] == 0).all()
    short, short_lens = fbank(torch.zeros(2, 300), torch.tensor([300, 200]))
    assert short.shape == (2, 0, 80) and short_lens.tolist() == [0, 0]


# ---------------------------------------------------------------- CMVN
def test_fit_cmvn_ignores_padding_and_normalises():
    torch.manual_seed(0)
    feats = torch.randn(3, 10, 4) * 2 + 5
    lens = torch.tensor([10, 6, 3])
    feats[1, 6:] = 1000.0  # padding must not count
    feats[2, 3:] = -1000.0
    mean, std = fit_cmvn([(feats[:2], lens[:2]), (feats[2:], lens[2:])])
    valid = torch.cat([feats[0], feats[1, :6], feats[2, :3]]).double()
    assert torch.allclose(mean.double(), valid.mean(0), atol=1e-5)
    assert torch.allclose(std.double(), valid.std(0, unbiased=False), atol=1e-5)
    cmvn = GlobalCMVN(4)
    cmvn.set_stats(mean, std)
    out = cmvn(valid.float())
    assert out.mean(0).abs().max() < 1e-4 and (out.std(0, unbiased=False) - 1).abs().max() < 1e-4
    assert set(cmvn.state_dict()) == {"mean", "std"}
    with pytest.raises(ValueError):
        fit_cmvn([])


def test_cmvn_from_utterances_skips_unreadable(tmp_path, caplog):
    soundfile.write(tmp_path / "a.wav", sine(0.3), 16000)
    utts = [Utterance("a", str(tmp_path / "a.wav"), 0.3), Utterance("b", str(tmp_path / "gone.wav"), 1.0)]
    fbank = Fbank()
    with caplog.at_level(logging.WARNING):
        mean, std = cmvn_from_utterances(utts, fbank, max_utterances=10)
    assert "gone.wav" in caplog.text
    feats, _ = fbank(load_audio(tmp_path / "a.wav")[None], torch.tensor([4800]))
    assert torch.allclose(mean, feats[0].mean(0), atol=1e-4)


# ---------------------------------------------------------------- SpecAugment
def test_specaugment_train_only_and_inside_lengths():
    torch.manual_seed(0)
    aug = SpecAugment(SpecAugmentConfig(freq_masks=2, max_freq_width=10, time_masks=2, max_time_width=20))
    feats = torch.randn(4, 100, 80) + 10.0  # no natural zeros
    lens = torch.tensor([100, 60, 30, 5])
    feats[1, 60:] = feats[2, 30:] = feats[3, 5:] = 7.0
    aug.eval()
    assert torch.equal(aug(feats, lens), feats)
    aug.train()
    masked = (aug(feats, lens) == 0)
    assert masked.any()
    for i, n in enumerate(lens.tolist()):
        time_masked = masked[i].all(dim=1)  # frames masked across every bin = time masks
        assert not time_masked[n:].any()
    # widths bounded: at most 2 masks × 10 bins per row
    assert masked.all(dim=1).sum(dim=1).max() <= 20


# ---------------------------------------------------------------- speed
def test_speed_perturb_changes_duration_and_pitch():
    wav = torch.from_numpy(sine(1.0, freq=1000.0))
    assert speed_perturb(wav, 1.0) is wav
    for factor in (0.9, 1.1):
        out = speed_perturb(wav, factor)
        assert abs(out.numel() - 16000 / factor) <= 1
        peak_hz = np.argmax(np.abs(np.fft.rfft(out.numpy()))) * 16000 / out.numel()
        assert abs(peak_hz - 1000.0 * factor) < 5
    with pytest.raises(ValueError):
        speed_perturb(wav, 0.0)
