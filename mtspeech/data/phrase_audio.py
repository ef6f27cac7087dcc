"""One phrase of a speaker's speech, trimmed to where the speech is: the corpus's building block.

`speak` runs the speaker's engine, trims the engine's padding, converts the voice through
WORLD if the speaker is a converted one and trims again. The corpus places these pieces at
known offsets in digital silence, so the trim decides where its speech segments are: `trim`
keeps them on speech for engines that pad with digital silence (espeak-ng) and with a noise
floor (flite, festival) alike.
"""

from __future__ import annotations

import numpy as np

from mtspeech.data.engines import ENGINES, synthesize
from mtspeech.data.engines.world import convert
from mtspeech.data.geometry import SAMPLE_RATE
from mtspeech.data.resample import resample
from mtspeech.data.voices import Speaker

FRAME = SAMPLE_RATE // 100  # samples in the 10 ms frames trimming measures energy on


def speak(text: str, speaker: Speaker) -> np.ndarray:
    """float32 (S,) at 16 kHz, trimmed: `text` in the speaker's engine voice, then through
    its WORLD conversion if it has one (trimmed before, so WORLD analyses speech only, and
    after, since resynthesis leaves low tails)."""
    wav, rate = synthesize(speaker.engine, text, speaker.engine_voice, speaker.pitch, speaker.rate)
    raw = resample(wav, rate, SAMPLE_RATE)
    wav = trim(raw, edge_floor_db(raw) if ENGINES[speaker.engine].noise_padded else None)
    if speaker.conversion is not None and wav.size:
        wav = trim(convert(wav, speaker.conversion, SAMPLE_RATE))
    return wav


def _frame_energy_db(wav: np.ndarray, frame: int) -> np.ndarray:
    """(ceil(S / frame),) mean power in dB of consecutive `frame`-sample frames of (S,) `wav`."""
    padded = np.pad(wav.astype(np.float64), (0, -len(wav) % frame))
    return 10 * np.log10(np.mean(padded.reshape(-1, frame) ** 2, axis=1) + 1e-20)


def edge_floor_db(wav: np.ndarray, frames: int = 3, frame: int = FRAME) -> float:
    """An engine's noise floor: the loudest of the first and last `frames` 10 ms frames of its
    raw output (for engines that pad speech with their noise floor: `Engine.noise_padded`)."""
    energy = _frame_energy_db(wav, frame)
    return float(np.concatenate([energy[:frames], energy[-frames:]]).max())


def trim(wav: np.ndarray, floor_db: float | None = None, range_db: float = 50.0, frame: int = FRAME) -> np.ndarray:
    """`wav` (S,) without its leading and trailing non-speech: cut to the first and last 10 ms
    frame (`frame` samples) louder than both `range_db` under the loudest frame and 6 dB over
    `floor_db` (the engine's noise floor, `edge_floor_db`, if known), then to the first and
    last sample above 0.002 x peak, so a segment starts and ends on a non-zero sample.
    espeak-ng pads with digital silence; flite and festival with a noise floor 45-70 dB under
    their loudest frame, which a sample threshold alone would keep inside the segment."""
    if not wav.size or not np.abs(wav).max():
        return wav[:0]
    energy_db = _frame_energy_db(wav, frame)
    threshold = energy_db.max() - range_db
    if floor_db is not None:
        threshold = max(threshold, floor_db + 6.0)
    active = np.nonzero(energy_db > threshold)[0]
    if not active.size:
        return wav[:0]
    wav = wav[active[0] * frame: min(len(wav), (active[-1] + 1) * frame)]
    loud = np.nonzero(np.abs(wav) > 0.002 * np.abs(wav).max())[0]
    return wav[loud[0]: loud[-1] + 1]
