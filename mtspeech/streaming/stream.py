"""A stream's state and the events it yields: what `StreamingRecognizer` hands its callers.

`Stream` is created by `StreamingRecognizer.new_stream` and driven only through the
recognizer; `PartialEvent`, `FinalEvent` and `SpeechActivityEvent` come back from
`StreamingRecognizer.events`. Split from `recognizer.py`, which owns the stepping.
`SpeakerChangeEvent`s come from a stream's speaker tracker (`speakers.py`).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from mtspeech.alignment import Word  # word, start, end (stream seconds), confidence
from mtspeech.data.geometry import FrameGeometry
from mtspeech.streaming.decoders import TokenDecoder
from mtspeech.streaming.endpoint import Endpointer
from mtspeech.streaming.features import FeatureBuffer


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class PartialEvent:
    """The current hypothesis of the utterance in progress: `text` = `stable` + " " + `unstable`
    (either may be empty). `stable` only ever extends within an utterance; for the greedy
    decoder the utterance's final text starts with it (see `mtspeech/streaming/decoders.py`)."""

    text: str
    stable: str = ""
    unstable: str = ""


@dataclass(frozen=True)
class FinalEvent:
    """A finished utterance.

    `start`/`end` span its words (absolute stream seconds); `detected_at` is the stream time at
    which it was finalized, `reason` the rule that fired (`rule2`, `rule3`, or `eos` at
    `finish`); `tokens` are the CTC token ids (for tests and benchmarks; not sent on the wire).
    """

    text: str
    start: float
    end: float
    words: tuple[Word, ...]
    tokens: tuple[int, ...]
    reason: str
    detected_at: float
    # Only for streams made with speaker turns (`mtspeech/streaming/speakers.py`): the
    # utterance's speaker label and each word's (None where no turn was known yet).
    speaker: str | None = None
    word_speakers: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class SpeechActivityEvent:
    """The VAD head's p(speech) for each encoder frame of one decoded chunk, frames from
    `start` (stream seconds) at `frame_shift_s`; only for streams made with `speech_activity`
    (a live activity display; issue 12)."""

    start: float
    frame_shift_s: float
    speech: tuple[float, ...]


@dataclass(frozen=True)
class SpeakerChangeEvent:
    """A new speaker turn (streams made with speaker turns only): `speaker` talks from `start`
    (stream seconds) on; `previous` spoke before (None for the stream's first turn);
    `detected_at` is the stream time at which the change was confirmed."""

    speaker: str
    previous: str | None
    start: float
    detected_at: float


Event = PartialEvent | FinalEvent | SpeechActivityEvent | SpeakerChangeEvent


# ----------------------------------------------------------------------------- the stream


class Stream:
    """State of one audio stream. Create with `StreamingRecognizer.new_stream`."""

    _ids = itertools.count()
    speech_activity = False  # emit a SpeechActivityEvent per chunk (set once by new_stream)
    speakers = None  # its SpeakerTracker when made with speaker turns (set once by new_stream)
    release_cache = None  # returns its cache row to the recognizer's pool (set once by new_stream)

    def __init__(self, sample_rate: int, endpointing: bool, interim: bool, cache_row: int, decoder: TokenDecoder,
                 endpointer: Endpointer, geometry: FrameGeometry) -> None:
        self.id = next(Stream._ids)
        self.sample_rate = sample_rate
        self.endpointing = endpointing
        self.interim = interim
        self.finished = False
        self.audio = FeatureBuffer(sample_rate, geometry)  # samples and feature frames not yet decoded
        self._lock = threading.Lock()  # guards `_events` (read by `drain_events` on another thread)
        self._events: list[Event] = []
        # Decoding state, advanced by the recognizer's steps (and only by them):
        self.cache_row = cache_row  # this stream's row of the recognizer's CachePool
        self.frames_done = 0  # encoder frames decoded so far (absolute frame index)
        self.decoder = decoder
        self.utterance = decoder.begin()  # the token decoder's search over the current utterance
        self.utterance_has_tokens = False  # a non-blank argmax of the decoder's head in this utterance
        self.endpointer = endpointer
        self.last_partial_key: tuple = ()  # the last partial sent (a new one only when it changes)
        self.stable_words: tuple[str, ...] = ()  # stable words sent in this utterance's partials

    def emit(self, event: Event) -> None:
        """Queue an event for the client (thread-safe)."""
        with self._lock:
            self._events.append(event)

    def emit_all(self, events: list[Event]) -> None:
        with self._lock:
            self._events.extend(events)

    def drain_events(self) -> list[Event]:
        """The events queued since the last call, oldest first (thread-safe)."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def new_utterance(self) -> None:
        """Reset the per-utterance state after a final: a fresh search, endpointer and partials."""
        self.utterance = self.decoder.begin()
        self.utterance_has_tokens = False
        self.endpointer.reset()
        self.last_partial_key = ()
        self.stable_words = ()

    @property
    def resamples(self) -> bool:
        """Whether accepted audio goes through a resampler (any rate but the model's)."""
        return self.audio.resampler is not None

    @property
    def samples_accepted(self) -> int:
        """Samples accepted so far, at the model's rate."""
        return self.audio.samples_accepted

    @property
    def audio_seconds(self) -> float:
        """Audio accepted so far, in seconds."""
        return self.samples_accepted / self.audio.geometry.sample_rate

    @property
    def decoded_seconds(self) -> float:
        """Audio accepted and already decoded, in seconds."""
        return self.audio_seconds - self.buffered_seconds

    @property
    def buffered_seconds(self) -> float:
        """Audio accepted but not decoded yet, in seconds. Grows when the client
        outpaces decoding."""
        return self.audio.buffered_seconds
