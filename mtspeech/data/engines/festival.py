"""Festival's English voices, each a Debian package of its own.

kal_diphone and ked_diphone are US male diphone voices (residual-excited LPC); slt is the
CMU ARCTIC US female voice as an HTS (HMM) voice at 32 kHz. Festival starts a Scheme
interpreter for every call (~0.4 s), by far the slowest engine here, which is one reason it
is the held-out `test-engine` (a small split; see `mtspeech.data.voices`). Rate: festival's
`Duration_Stretch`, so that `rate_wpm` 170 is the voice's own pace (the HTS voice ignores
it); `pitch` is ignored.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

VOICES = {"kal_diphone": "M", "ked_diphone": "M", "cmu_us_slt_arctic_hts": "F"}  # voice -> sex
PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
            "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}
VOICE_DIRS = (Path("/usr/share/festival/voices"),)
NATIVE_WPM = 170


def missing_voice_package(voice: str) -> str | None:
    """The Debian package to install for `voice` if it is not installed, else None."""
    if voice not in VOICES:
        raise ValueError(f"festival voice {voice!r} is not one of {sorted(VOICES)}")
    installed = any(d.is_dir() for root in VOICE_DIRS for d in root.glob(f"*/{voice}"))
    return None if installed else PACKAGES[voice]


def run(text: str, voice: str, pitch: int, rate_wpm: int) -> tuple[np.ndarray, int]:
    """(float32 (S,) audio, its rate): festival's text2wave reading `text` in `voice`."""
    import soundfile as sf

    if voice not in VOICES:
        raise ValueError(f"festival voice {voice!r} is not one of {sorted(VOICES)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        subprocess.run(["text2wave", "-eval", f"(voice_{voice})", "-eval",
                        f"(Parameter.set 'Duration_Stretch {NATIVE_WPM / rate_wpm:.4f})", "-o", str(out)],
                       input=text.lower().encode(), capture_output=True, check=True)
        wav, rate = sf.read(str(out), dtype="float32")
    return wav, rate
