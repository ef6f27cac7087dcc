"""The one resampler (soxr), offline and streaming, and the sample-value policy of everything
that accepts audio.

Training, evaluation, synthesis and the server all resample here, with one filter: soxr's
polyphase resampler at `QUALITY`. Its cost per sample does not depend on the rate ratio
(torchaudio's sinc kernel grows with the reduced ratio: seconds and GBs per call at 8001 Hz),
its stream output does not depend on how the input is chunked, and the stream's output equals
the offline `resample` of the whole signal, so a file evaluated offline and the same file
served give the same features (tests/serve/test_resample_parity.py).
"""

from __future__ import annotations

import numpy as np
import soxr

from mtspeech.data.geometry import SAMPLE_RATE

QUALITY = "HQ"  # soxr's high quality (20-bit, passband to 91% of Nyquist): every resampling uses it

# Largest |sample| `accept` takes (+24 dBFS). Float audio lives in [-1, 1] and real signals
# never come near this; far larger values (1e30) overflow the filterbank energies to inf and
# would silence the stream for good, or (3e38 at 44.1 kHz) overflow in the resampler.
MAX_ABS_SAMPLE = 16.0


def resample(x: np.ndarray, orig_rate: int, new_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Offline resampling of float samples (N,) or (N, channels) from `orig_rate` to `new_rate`
    Hz → float32 (M,) or (M, channels), M = round(N * new_rate / orig_rate); the input itself
    when the rates agree. The same filter as `StreamResampler`, whose output it equals."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"resample: rates must be positive, got {orig_rate} -> {new_rate} Hz")
    x = np.asarray(x, dtype=np.float32)
    if orig_rate == new_rate:
        return x
    return soxr.resample(x, orig_rate, new_rate, quality=QUALITY)


class StreamResampler:
    """Streaming resampling (to the model's rate by default) with soxr's polyphase filter at
    `QUALITY`.

    Its stream output is bit-identical however the input is chunked, and equal to `resample`
    on the whole signal (tests/streaming/test_streaming.py checks both); after `flush` the
    output totals round(N * new_rate / orig_rate) samples.
    """

    def __init__(self, orig_rate: int, new_rate: int = SAMPLE_RATE) -> None:
        self.orig_rate, self.new_rate = orig_rate, new_rate
        self._soxr = soxr.ResampleStream(orig_rate, new_rate, 1, dtype="float32", quality=QUALITY)
        self._flushed = False

    def push(self, x: np.ndarray) -> np.ndarray:
        """Feed input samples (N,); returns the 16 kHz samples (M,) that are now final."""
        if self.orig_rate == self.new_rate:
            return x
        return self._soxr.resample_chunk(np.ascontiguousarray(x, dtype=np.float32))

    def flush(self) -> np.ndarray:
        """The remaining output (M,), as if the input ended here; later calls return nothing."""
        if self.orig_rate == self.new_rate or self._flushed:
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        return self._soxr.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def check_samples(x: np.ndarray, what: str = "samples") -> None:
    """Raise ValueError naming the worst sample of `x` (N,) if any is non-finite or beyond
    `MAX_ABS_SAMPLE`."""
    # One pass in the common case: NaN fails the comparison and inf exceeds the bound.
    if x.size == 0 or np.abs(x).max() <= MAX_ABS_SAMPLE:
        return
    nan, inf = np.isnan(x), np.isinf(x)
    if nan.any():
        i, kind = int(np.argmax(nan)), "NaN"
    elif inf.any():
        i, kind = int(np.argmax(inf)), "infinity"
    else:
        i, kind = int(np.argmax(np.abs(x))), "out of range"
    raise ValueError(
        f"{what}[{i}] = {float(x[i]):g} ({kind}): expected finite samples with "
        f"|x| <= MAX_ABS_SAMPLE = {MAX_ABS_SAMPLE:g} (float audio is in [-1, 1]); "
        "scale integer PCM (int16: divide by 32768) and drop NaN/infinity before sending"
    )
