"""The one resampler: offline `resample` is the streaming resampler's filter, on the whole signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtspeech.data.features import speed_perturb
from mtspeech.data.resample import StreamResampler, resample


@pytest.mark.parametrize("rate", [8000, 11025, 44100])
def test_offline_resample_equals_the_stream_resampler(rate):
    x = np.random.default_rng(rate).uniform(-0.5, 0.5, rate // 3 + 17).astype(np.float32)
    r = StreamResampler(rate)
    streamed = np.concatenate([r.push(x[i : i + 1234]) for i in range(0, len(x), 1234)] + [r.flush()])
    offline = resample(x, rate, 16000)
    assert offline.dtype == np.float32 and len(offline) == round(len(x) * 16000 / rate)
    np.testing.assert_array_equal(offline, streamed)


def test_resample_keeps_the_input_at_its_rate_and_refuses_bad_rates():
    x = np.arange(10, dtype=np.float32)
    assert resample(x, 16000, 16000) is x
    with pytest.raises(ValueError, match="rates must be positive"):
        resample(x, 0, 16000)


def test_speed_perturb_runs_the_resampler_on_each_channel():
    wav = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (2, 16000)).astype(np.float32))
    both = speed_perturb(wav, 1.1)
    assert both.shape == (2, round(16000 / 1.1)) and both.dtype == wav.dtype
    torch.testing.assert_close(both[1], speed_perturb(wav[1], 1.1), atol=0, rtol=0)
    torch.testing.assert_close(both[0], torch.from_numpy(resample(wav[0].numpy(), 17600, 16000)), atol=0, rtol=0)
