"""Endpoint detection for streaming recognition: when does an utterance end?

Three rules shaped like sherpa-onnx's (https://k2-fsa.github.io/sherpa/onnx/endpoint.html),
all measured in encoder frames and configured in seconds:

- rule 1: trailing non-speech >= `rule1_trailing_silence_s` and nothing decoded yet
  (a long silence: drop the empty utterance so rule 3 does not count silence);
- rule 2: trailing non-speech >= `rule2_trailing_silence_s` after something was decoded
  (the speaker paused: emit a final);
- rule 3: the utterance is `rule3_max_utterance_s` long (force a final).

What counts as "non-speech" is the `mode`: `"vad"` reads the VAD head's speech probability
(`p < speech_threshold`), `"blank"` uses CTC's own evidence (the greedy label is the blank),
which is what sherpa does. Keeping both lets a benchmark measure how much earlier the VAD head
finalizes than the blank-only endpointer on the same audio.

`min_speech_s` is a hangover against noise: a run of speech frames shorter than it, inside
trailing non-speech, pauses the count instead of restarting it (a noise burst the VAD head
scores as speech for 40-120 ms otherwise keeps an utterance open until the audio ends); a run
that reaches it restarts the count. 0 (the default) restarts on any speech frame. It applies
in mode `vad` only: in mode `blank` a single non-blank frame is a real token (CTC emits
one-frame spikes), and a hangover there lets the endpointer fire in the middle of words
(measured: `benchmarks/README.md`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ENDPOINT_MODES = ("vad", "blank")
# Seconds to frames without float drift: 1.2 s at 40 ms frames is 30 frames, not 31.
_EPS = 1e-6


@dataclass(frozen=True)
class EndpointConfig:
    """Endpointing rules; times in seconds of audio."""

    mode: str = "vad"
    speech_threshold: float = 0.5
    rule1_trailing_silence_s: float = 2.4
    rule2_trailing_silence_s: float = 1.2
    rule3_max_utterance_s: float = 20.0
    min_speech_s: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ENDPOINT_MODES:
            raise ValueError(f"endpoint.mode={self.mode!r}: expected one of {ENDPOINT_MODES}")
        if not 0.0 < self.speech_threshold < 1.0:
            raise ValueError(f"endpoint.speech_threshold={self.speech_threshold}: expected 0 < t < 1")
        for name in ("rule1_trailing_silence_s", "rule2_trailing_silence_s", "rule3_max_utterance_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"endpoint.{name}={getattr(self, name)}: expected a positive number of seconds")
        if not 0.0 <= self.min_speech_s < math.inf:
            raise ValueError(f"endpoint.min_speech_s={self.min_speech_s}: expected a finite number of seconds >= 0")


class Endpointer:
    """Frame-by-frame endpoint state of one utterance.

    Feed it one boolean per encoder frame (`update`), then ask `check(has_words)`; after an
    endpoint, `reset()` starts the next utterance.
    """

    def __init__(self, config: EndpointConfig, frame_shift_s: float) -> None:
        self.config = config
        self.frame_shift_s = frame_shift_s
        self.trailing_nonspeech_frames = 0
        self.utterance_frames = 0
        self.speech_run_frames = 0
        # Mode blank: 1 (a one-frame non-blank is a token). 0.12 s at 40 ms frames is 3 frames.
        self.min_speech_frames = (1 if config.mode == "blank"
                                  else max(1, math.ceil(config.min_speech_s / frame_shift_s - _EPS)))

    def update(self, nonspeech: bool) -> None:
        """Account for one more encoder frame."""
        self.utterance_frames += 1
        self.speech_run_frames = 0 if nonspeech else self.speech_run_frames + 1
        if self.speech_run_frames >= self.min_speech_frames:
            self.trailing_nonspeech_frames = 0
        elif nonspeech:
            self.trailing_nonspeech_frames += 1
        # else: a speech run still shorter than min_speech_s may be a noise burst, so it does not
        # restart the count; nor does it advance it, or the first frames of a phrase after a
        # pause would complete rule 2 inside the phrase (measured: benchmarks/README.md).

    def check(self, has_words: bool) -> str | None:
        """The rule that fires now (`"rule1"`, `"rule2"`, `"rule3"`), or None."""
        cfg = self.config
        trailing_s = self.trailing_nonspeech_frames * self.frame_shift_s
        if not has_words and trailing_s + _EPS >= cfg.rule1_trailing_silence_s:
            return "rule1"
        if has_words and trailing_s + _EPS >= cfg.rule2_trailing_silence_s:
            return "rule2"
        if self.utterance_frames * self.frame_shift_s + _EPS >= cfg.rule3_max_utterance_s:
            return "rule3"
        return None

    def reset(self) -> None:
        """Start counting a new utterance."""
        self.trailing_nonspeech_frames = 0
        self.utterance_frames = 0
        self.speech_run_frames = 0
