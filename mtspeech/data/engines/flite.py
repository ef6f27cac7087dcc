"""CMU Flite's built-in voices (`flite -lv`).

awb (Scottish English male), rms (US male) and slt (US female) are clustergen statistical
parametric voices; kal16 is a US male diphone voice (kal is the same voice at 8 kHz, and
awb_time only speaks clock times: both left out). Rate: flite's `duration_stretch`, so that
`rate_wpm` 170 is the voice's own pace; flite has no pitch control for these voices (`pitch`
is ignored: WORLD conversion varies pitch instead).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

VOICES = {"awb": "M", "rms": "M", "slt": "F", "kal16": "M"}  # voice -> sex
NATIVE_WPM = 170  # the pace `rate_wpm` is relative to


def run(text: str, voice: str, pitch: int, rate_wpm: int) -> tuple[np.ndarray, int]:
    """(float32 (S,) audio, its rate): flite reading `text` in built-in `voice`."""
    import soundfile as sf

    if voice not in VOICES:
        raise ValueError(f"flite voice {voice!r} is not one of {sorted(VOICES)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        subprocess.run(["flite", "-voice", voice, "--setf", f"duration_stretch={NATIVE_WPM / rate_wpm:.4f}",
                        "-t", text.lower(), "-o", str(out)], capture_output=True, check=True)
        wav, rate = sf.read(str(out), dtype="float32")
    return wav, rate
