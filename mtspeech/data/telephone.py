"""A telephone channel: what a phone call makes of wideband speech, as the server receives it.

A call reaches the server as 8 kHz audio (the rate of every telephone network), which the
server resamples to the model's 16 kHz with the one resampler (`mtspeech.data.resample`, soxr).
`narrowband` models the call up to the server's door and returns those 8 kHz samples:

1. down to `PHONE_RATE` (8 kHz) with the one resampler, whose anti-alias filter removes
   everything above 4 kHz;
2. the telephone band, `BAND_HZ` (300-3400 Hz, ITU-T G.712's passband): a Butterworth band-pass
   of order `BAND_ORDER`, run forwards and backwards (`scipy.signal.sosfiltfilt`), so its
   phase is zero and speech stays on the frames its labels mark (a real channel's filter is
   causal, a few milliseconds of delay that no label here resolves);
3. the call's level: the signal scaled to an RMS of `level_dbov` dB below the codec's full
   scale (±1), the level variation between calls (ITU-T P.56's nominal speech level is
   -26 dBov), and clipped there, as the codec clips a call too loud for it;
4. G.711 μ-law companding, encoded to 8-bit codes and decoded (torchaudio's μ-law, μ = 255: the
   continuous law that G.711's segmented tables approximate), so the quantisation noise
   follows the speech's level as a codec's does.

`telephone_channel` adds the server's own step, 8 kHz back up to the input's rate with the one
resampler (the server's `StreamResampler` gives the same samples: tests/serve/
test_resample_parity.py), and keeps the length. The loader's `telephone_prob` augmentation and
the telephone twins of the corpus (`noisy_twins.make_phone_twin`, which stores `narrowband`'s
8 kHz samples, so reading a twin file resamples it exactly as the server would) use these two
functions, so training, evaluation and serving see one channel. Both are pure functions of their
arguments: the random part, the level, is drawn by the caller from a seeded generator
(`draw_level_dbov`).
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.functional as AF
from scipy.signal import butter, sosfiltfilt

from mtspeech.data.resample import resample

PHONE_RATE = 8000  # Hz: the narrowband telephone rate (G.711)
BAND_HZ = (300.0, 3400.0)  # the telephone passband (G.712)
# Order 6 each way (12 forwards and backwards): with the resampler's anti-alias edge it puts
# white noise below 200 Hz and above 3700 Hz more than 30 dB under the passband, down to the
# μ-law's own noise floor (tests/data/test_telephone.py measures it).
BAND_ORDER = 6
MU_LAW_CHANNELS = 256  # 8-bit G.711 codes
LEVEL_DBOV = (-32.0, -20.0)  # default range of call levels, around P.56's nominal -26 dBov
_BAND_SOS = butter(BAND_ORDER, BAND_HZ, btype="bandpass", fs=PHONE_RATE, output="sos")


def draw_level_dbov(rng: np.random.Generator, level_range_dbov: tuple[float, float] = LEVEL_DBOV) -> float:
    """A call's speech level in dBov, uniform in `level_range_dbov` (one draw from `rng`)."""
    return float(rng.uniform(*level_range_dbov))


def narrowband(x: np.ndarray, sample_rate: int, level_dbov: float | None = -26.0) -> np.ndarray:
    """x (S,) at `sample_rate` Hz → float32 (round(S · 8000 / sample_rate),) at `PHONE_RATE`:
    band-passed to `BAND_HZ`, at an RMS of `level_dbov` (None: the level of `x` kept), μ-law
    coded and decoded (an all-zero input is left unscaled)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"narrowband: expected mono samples (S,), got shape {x.shape}")
    if level_dbov is not None and level_dbov > 0:
        raise ValueError(f"narrowband: level_dbov={level_dbov}: expected <= 0 (dB below the codec's full scale)")
    y = resample(x, sample_rate, PHONE_RATE).astype(np.float64)
    if len(y) < 2:
        return y.astype(np.float32)
    # sosfiltfilt's default edge padding, shortened for utterances shorter than it
    y = sosfiltfilt(_BAND_SOS, y, padlen=min(3 * (2 * len(_BAND_SOS) + 1), len(y) - 1))
    rms = float(np.sqrt(np.mean(y**2)))
    if level_dbov is not None and rms > 0:
        y *= 10 ** (level_dbov / 20) / rms
    codes = AF.mu_law_encoding(torch.from_numpy(np.clip(y, -1.0, 1.0)), MU_LAW_CHANNELS)
    return AF.mu_law_decoding(codes, MU_LAW_CHANNELS).numpy().astype(np.float32)


def telephone_channel(x: np.ndarray, sample_rate: int, level_dbov: float | None = -26.0) -> np.ndarray:
    """x (S,) at `sample_rate` Hz → float32 (S,) at `sample_rate`: `narrowband(x)` resampled back
    with the one resampler, as the server resamples an 8 kHz call, cut or zero-padded by the
    rounding's sample so time stays where it was."""
    y = resample(narrowband(x, sample_rate, level_dbov), PHONE_RATE, sample_rate)
    n = len(x)
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))
