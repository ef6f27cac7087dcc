"""espeak-ng: formant synthesis; a voice is `ACCENT+VARIANT` (espeak-ng-data/voices/!v)."""

from __future__ import annotations

import io
import subprocess

import numpy as np

ESPEAK_RATE = 22050  # Hz: espeak-ng's fixed output rate


def run(text: str, voice: str, pitch: int, rate_wpm: int) -> tuple[np.ndarray, int]:
    """(float32 (S,) audio, 22050): `text` in `voice` at pitch `pitch` (0-99) and `rate_wpm`."""
    import soundfile as sf

    out = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(rate_wpm), "--stdout",
                          text.lower()], capture_output=True, check=True).stdout
    wav, rate = sf.read(io.BytesIO(out), dtype="float32")
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng returned {rate} Hz audio, expected {ESPEAK_RATE}")
    return wav, rate
