"""Speech synthesis engines of the demo corpus, one module each, behind one call.

`synthesize(engine, text, voice, pitch, rate_wpm)` returns float32 (S,) audio at the
engine's own rate; `mtspeech.data.phrase_audio` resamples it to the project's 16 kHz with the
one resampler (`mtspeech.data.resample`, soxr). This folder imports nothing else of
`mtspeech.data`, which imports it (no folder cycle). Each engine is a Debian program: `require(engine, voice)`
raises `EngineMissingError` naming the Debian package to install when its binary, or the
voice's own package, is missing. Engines run as subprocesses, so their output depends only
on their arguments (the corpus's determinism rests on that; tests check it per engine).

    espeak-ng   formant synthesis, ~100 English voice variants x 8 accents (`espeak.py`)
    flite       CMU Flite's built-in voices: clustergen awb, rms, slt; diphone kal16 (`flite.py`)
    festival    Festival's English voices: kal and ked diphones, the slt HTS voice (`festival.py`)

Voice conversion (`world.py`) works on any engine's output: WORLD vocoder analysis, warps of
F0, spectral envelope and aperiodicity, resynthesis.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mtspeech.data.engines import espeak, festival, flite


class EngineMissingError(RuntimeError):
    """A synthesis engine or one of its voices is not installed (the message names the package)."""


@dataclass(frozen=True)
class Engine:
    name: str
    binary: str       # looked up on PATH
    package: str      # the Debian package that ships `binary`
    # (text, voice, pitch, rate_wpm) -> (float32 (S,) audio, its sample rate)
    run: Callable[[str, str, int, int], tuple[np.ndarray, int]]
    voice_package: Callable[[str], str | None]  # the Debian package a missing voice needs; None: installed
    # True: the engine pads speech with >= 30 ms of its own noise floor at both ends (flite,
    # festival), so trimming can measure that floor; False: with digital silence (espeak-ng).
    noise_padded: bool


ENGINES = {
    "espeak-ng": Engine("espeak-ng", "espeak-ng", "espeak-ng", espeak.run, lambda voice: None, False),
    "flite": Engine("flite", "flite", "flite", flite.run, lambda voice: None, True),
    "festival": Engine("festival", "text2wave", "festival", festival.run, festival.missing_voice_package, True),
}


def require(engine: str, voice: str | None = None) -> Engine:
    """The engine `engine`, checked installed (and `voice` with it); else EngineMissingError."""
    if engine not in ENGINES:
        raise ValueError(f"unknown synthesis engine {engine!r}; known: {sorted(ENGINES)}")
    spec = ENGINES[engine]
    if shutil.which(spec.binary) is None:
        raise EngineMissingError(f"synthesis engine {engine}: `{spec.binary}` is not on PATH; install "
                                 f"Debian's '{spec.package}' package (apt-get install {spec.package})")
    package = spec.voice_package(voice) if voice is not None else None
    if package is not None:
        raise EngineMissingError(f"{engine} voice {voice!r} is not installed; install Debian's "
                                 f"'{package}' package (apt-get install {package})")
    return spec


def synthesize(engine: str, text: str, voice: str, pitch: int = 50, rate_wpm: int = 170) -> tuple[np.ndarray, int]:
    """(float32 (S,) audio, its sample rate): `engine` reading `text` in `voice`."""
    wav, rate = require(engine).run(text, voice, pitch, rate_wpm)
    if wav.ndim != 1 or not wav.size:
        raise RuntimeError(f"{engine} voice {voice!r} returned no mono audio for {text!r}")
    return wav.astype(np.float32), int(rate)
