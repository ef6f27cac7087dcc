"""FeatureBuffer + featurize: incremental, batched fbank equals featurizing the whole signal."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
import torch

from mtspeech.data.features import feature_frames
from mtspeech.data.geometry import SAMPLE_RATE
from mtspeech.streaming.features import FeatureBuffer, featurize
from tiny_asr import signal, tiny_model, tiny_recognizer

torch.set_num_threads(1)  # tiny tensors on shared cores

WINDOW, STRIDE = 19, 16  # the recognizer's window and stride for chunk_frames=4


def consume(buf: FeatureBuffer, model, out: list[torch.Tensor], batch: list[FeatureBuffer]) -> None:
    """Featurize (batched with `batch`) and consume full windows by the stride, as `step` does."""
    featurize(batch, WINDOW, model.features)
    while buf.frame_count >= WINDOW:
        out.append(buf.window(WINDOW)[:STRIDE].clone())
        buf.advance(STRIDE)
        featurize([buf], WINDOW, model.features)
    assert buf.frame_count < WINDOW


@pytest.mark.parametrize("seed", [0, 1])
def test_incremental_features_equal_whole_signal(seed):
    """Random pieces at 16 kHz and at 8 kHz (resampled), featurized together in batched calls,
    give the frames of `model.features` on the whole (resampled) signal."""
    model = tiny_model()
    rng = np.random.default_rng(seed)
    sources = {16000: signal(2.3, seed), 8000: signal(1.7, seed + 7, rate=8000)}
    bufs = {rate: FeatureBuffer(rate) for rate in sources}
    pos = dict.fromkeys(sources, 0)
    out: dict[int, list[torch.Tensor]] = {rate: [] for rate in sources}
    while any(pos[r] < len(x) for r, x in sources.items()):
        for rate, x in sources.items():
            n = int(rng.integers(1, 3000))
            bufs[rate].push(x[pos[rate] : pos[rate] + n].copy())
            pos[rate] += n
        for rate, buf in bufs.items():
            consume(buf, model, out[rate], list(bufs.values()))
    for rate, buf in bufs.items():
        buf.flush()
        featurize([buf], WINDOW, model.features)
        rest = buf.take_rest()
        got = torch.cat(out[rate] + ([rest] if rest is not None else []))
        whole = sources[rate] if rate == SAMPLE_RATE else soxr.resample(sources[rate], rate, SAMPLE_RATE, "HQ")
        assert buf.samples_accepted == len(whole)
        with torch.inference_mode():
            want, lens = model.features(torch.from_numpy(whole)[None], torch.tensor([len(whole)]))
        assert got.shape[0] == feature_frames(len(whole)) == int(lens[0]) > 5 * WINDOW
        # Equal up to float rounding: the STFT and mel matmul of a shorter input may round a few
        # values the other way (one ulp, 0.4% of them here).
        torch.testing.assert_close(got, want[0], rtol=1e-6, atol=1e-6, msg=lambda m: f"{rate} Hz: {m}")
        assert buf.buffered_seconds < WINDOW * 160 / SAMPLE_RATE  # only a frame's samples are left
        assert buf.take_rest() is None


def test_featurize_computes_at_most_one_window_per_call():
    model = tiny_model()
    buf = FeatureBuffer(SAMPLE_RATE)
    buf.push(signal(30.0))  # far more than one window at once
    featurize([buf], WINDOW, model.features)
    assert buf.frame_count == WINDOW and buf.frames_available() == feature_frames(30 * SAMPLE_RATE)
    assert buf.buffered_seconds == pytest.approx(30.0)
    buf.advance(STRIDE)
    assert buf.frame_count == WINDOW - STRIDE and buf.buffered_seconds == pytest.approx(30.0 - STRIDE / 100)
    with pytest.raises(ValueError, match="window of 19"):
        buf.window(WINDOW)


def test_recognizer_leaves_less_than_a_window_buffered():
    rec = tiny_recognizer()
    s = rec.new_stream(sample_rate=8000)
    assert s.resamples
    wav = signal(1.0, rate=8000)
    for _ in range(8):
        rec.accept(s, wav)
        while rec.ready(s):
            rec.step([s])
        assert s.audio.frame_count < rec.window_frames
        assert s.buffered_seconds < (rec.window_frames * 160 + 400) / SAMPLE_RATE
    assert s.audio_seconds < 8.0  # the resampler holds back its filter's delay until flushed
    rec.finish(s)
    assert s.audio.frame_count == 0 and s.samples_accepted == 8 * SAMPLE_RATE
