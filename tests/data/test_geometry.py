"""FrameGeometry's arithmetic against the real front end: the filterbank, the conv subsampling
and a streaming recognizer built on them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mtspeech.data.features import Fbank, FeatureConfig
from mtspeech.data.geometry import FrameGeometry
from tiny_asr import tiny_model, tiny_recognizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_the_model_geometry_is_the_pinned_one(model):
    g = model.geometry
    assert g == FrameGeometry() == FrameGeometry.of(FeatureConfig(), model.encoder)
    assert (g.sample_rate, g.hop_samples, g.window_samples, g.subsampling, g.right_context) == (16000, 160, 400, 4, 6)
    assert g.hop_s == 0.01 and g.frame_shift_s == 0.04 and g.frame_shift_samples == 640
    assert g.chunk_window(1) == (7, 4) and g.chunk_window(8) == (35, 32)
    assert tiny_recognizer().geometry == g


@pytest.mark.parametrize("cfg", [FeatureConfig(), FeatureConfig(n_fft=512, win_length=512, hop_length=128)])
def test_feature_frames_equal_the_filterbank(cfg):
    g, fbank = FrameGeometry.of(cfg, type("Enc", (), {"subsampling": 4, "right_context": 6})), Fbank(cfg)
    n = torch.tensor([0, 1, cfg.win_length - 1, cfg.win_length, 1000, 4321, 16000])
    feats, lens = fbank(torch.randn(len(n), int(n.max())), n)
    assert lens.tolist() == g.feature_frames(n).tolist() == [g.feature_frames(int(k)) for k in n]
    assert feats.shape[1] == g.feature_frames(int(n.max()))
    assert g.feature_frames(np.int64(4321)) == g.feature_frames(4321)
    assert g.feature_frames(np.array([cfg.win_length - 1, cfg.win_length])).tolist() == [0, 1]  # numpy too


@torch.no_grad()
def test_subsampled_frames_equal_the_conv_front_end(model):
    g, front = model.geometry, model.encoder.front
    for t in range(0, 60):
        out, lens = front(torch.randn(1, t, 80), torch.tensor([t]))
        assert out.shape[1] == int(lens) == g.subsampled_frames(t) == int(g.subsampled_frames(torch.tensor(t)))


@pytest.mark.parametrize("c", [1, 2, 5, 8])
def test_chunk_window_is_the_fewest_frames_for_c_outputs_and_chunks_tile(model, c):
    g = model.geometry
    window, stride = g.chunk_window(c)
    assert (window, stride) == (4 * c + 3, 4 * c)
    assert g.subsampled_frames(window) == c and g.subsampled_frames(window - 1) == c - 1
    for k in range(4):  # chunk k reads [stride k, stride k + window): c new frames each
        assert g.subsampled_frames(stride * k + window) == c * (k + 1)


@torch.no_grad()
def test_frame_shift_and_receptive_field_match_the_real_encoder_front(model):
    """Moving one sample changes exactly the encoder frames whose receptive window holds it:
    frame j reads samples [frame_shift_samples j, frame_shift_samples j + receptive_field_samples),
    centred at `frame_centres_s(j)`."""
    g = model.geometry
    wav = torch.randn(1, 2 * g.sample_rate // 5, generator=torch.Generator().manual_seed(0))
    lens = torch.tensor([wav.shape[1]])

    def front(w):
        feats, feat_lens = model.features(w, lens)
        return model.encoder.front(feats, feat_lens)[0][0]  # (T', D)

    base = front(wav)
    assert base.shape[0] == g.encoder_frames(wav.shape[1])
    # The periodic Hann window weighs a frame's first sample by 0, so each boundary is probed
    # one sample inside it (641, not 640).
    for p in (1, 639, 641, 1359, 1360, 3000, 5119):
        moved = wav.clone()
        moved[0, p] += 1.0
        changed = (front(moved) - base).abs().amax(dim=1) > 0
        j = torch.arange(base.shape[0])
        start = j * g.frame_shift_samples
        assert torch.equal(changed, (start <= p) & (p < start + g.receptive_field_samples)), p
    centres = g.frame_centres_s(torch.arange(3, dtype=torch.float64))
    assert centres.tolist() == pytest.approx([(640 * j + 680) / 16000 for j in range(3)])


def test_bad_geometry_and_chunks_are_refused():
    with pytest.raises(ValueError, match="hop_samples"):
        FrameGeometry(hop_samples=0)
    with pytest.raises(ValueError, match="sample_rate"):
        FrameGeometry(sample_rate=16000.0)
    with pytest.raises(ValueError, match="chunk_frames"):
        FrameGeometry().chunk_window(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        FrameGeometry().hop_samples = 80
