"""Wire formats of the server: the protocol's single source of truth.

WebSocket `/v1/stream` (see docs/server.md):

    client → {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", ...}
    client → binary frames of audio in that encoding (any size up to the frame limit)
    client → {"type": "stop"}                 flush: the server finalizes and answers "end"
    server → {"type": "partial", "text", "stable", "unstable"}  the utterance in progress:
                                              `stable` words only ever extend, `unstable` may change
    server → {"type": "final", "text", "start", "end", "words": [...]}   times in seconds
    server → {"type": "activity", "start", "frame_s", "speech": [...]}  per chunk, if asked for:
                                              the VAD head's p(speech) of each encoder frame
    server → {"type": "speaker_change", "speaker", "previous", "start", "detected_at"}  with
                                              `speakers`: a new turn (finals and words then carry `speaker`)
    server → {"type": "error", "code", "message"}
    server → {"type": "end"}                  nothing more follows; the server closes

HTTP errors use OpenAI's shape, `{"error": {"message", "type", "code", "param"}}`, so the
official `openai` client reports them as it does for OpenAI itself.
"""

from __future__ import annotations

import dataclasses
import re
from enum import Enum
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from mtspeech.data.geometry import SAMPLE_RATE
from mtspeech.streaming.endpoint import EndpointConfig
from mtspeech.streaming.hotwords import DEFAULT_BOOST, MAX_BOOST, MAX_HOTWORDS, MAX_PHRASE_CHARS, phrase_words
from mtspeech.streaming import FinalEvent, PartialEvent, SpeechActivityEvent
from mtspeech.streaming.speakers import MAX_ENROLLED, SpeakerTurnConfig
from mtspeech.streaming.stream import SpeakerChangeEvent

ENCODINGS = {"pcm_s16le": (np.dtype("<i2"), 32768.0), "f32le": (np.dtype("<f4"), 1.0)}


class ErrorCode(str, Enum):
    """Every error the server reports; `terminal` ones end the stream."""

    bad_json = "bad_json"  # a text frame that is not a JSON object
    unknown_type = "unknown_type"  # a JSON message whose "type" the server does not know
    bad_message = "bad_message"  # a known message with invalid fields
    audio_before_start = "audio_before_start"
    already_started = "already_started"
    bad_audio = "bad_audio"  # frame length not a whole number of samples, NaN/inf samples
    unsupported_sample_rate = "unsupported_sample_rate"
    frame_too_large = "frame_too_large"
    stream_too_long = "stream_too_long"
    idle_timeout = "idle_timeout"
    too_many_streams = "too_many_streams"
    unauthorized = "unauthorized"
    shutting_down = "shutting_down"
    internal = "internal"
    client_disconnected = "client_disconnected"  # counted in metrics only: nobody to tell
    # HTTP only
    empty_file = "empty_file"
    unsupported_audio = "unsupported_audio"  # corrupt or an unknown container/codec
    file_too_large = "file_too_large"
    bad_request = "bad_request"
    model_not_found = "model_not_found"  # GET /v1/models/{id} of another id


# ----------------------------------------------------------------------------- client → server

# Bounds of a stream's endpoint rules. A silence rule longer than 30 s never fires in speech
# anyone waits for, and an utterance is bounded because a partial re-renders it whole and a
# beam decoder keeps its log-probs: past 60 s a stream costs more per chunk than it should.
MAX_ENDPOINT_SILENCE_S = 30.0
MAX_UTTERANCE_S = 60.0


class EndpointRules(BaseModel):
    """A stream's endpoint rules (`start.endpoint`), in seconds of audio; a field left out keeps
    the server's default (docs/server.md, Endpointing). Non-finite, non-positive or larger than
    the bounds above is `bad_message`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # rule 2: trailing non-speech after something was decoded ends the utterance (a final)
    silence_after_speech_s: float | None = Field(default=None, gt=0, le=MAX_ENDPOINT_SILENCE_S)
    # rule 1: trailing non-speech with nothing decoded drops the empty utterance
    silence_without_speech_s: float | None = Field(default=None, gt=0, le=MAX_ENDPOINT_SILENCE_S)
    # rule 3: an utterance this long is finalized whatever follows
    max_utterance_s: float | None = Field(default=None, gt=0, le=MAX_UTTERANCE_S)

    def apply(self, default: EndpointConfig) -> EndpointConfig:
        """`default` with the fields given here replaced."""
        given = {"rule2_trailing_silence_s": self.silence_after_speech_s,
                 "rule1_trailing_silence_s": self.silence_without_speech_s,
                 "rule3_max_utterance_s": self.max_utterance_s}
        return dataclasses.replace(default, **{k: v for k, v in given.items() if v is not None})


MAX_EMBEDDING_DIM = 4096  # far above any speaker head's; bounds what one reference may cost
SPEAKER_NAME = r"^[^\x00-\x1f\x7f]{1,64}$"  # 1-64 characters, no control characters


class EnrolledSpeaker(BaseModel):
    """A named reference for speaker turns: an embedding of the server's speaker head (e.g. the
    mean of its `speaker_embedding`s; see docs/server.md, Speaker turns)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(pattern=SPEAKER_NAME)
    embedding: list[float] = Field(min_length=1, max_length=MAX_EMBEDDING_DIM)


class Hotword(BaseModel):
    """A phrase the beam decoders favour on this stream and its bonus per word, in the search's
    log-score units (docs/server.md, Hotwords). The bounds are the recognizer's
    (`mtspeech/streaming/hotwords.py`), checked here first so the answer names the field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    phrase: str = Field(min_length=1, max_length=MAX_PHRASE_CHARS)
    boost: float = Field(default=DEFAULT_BOOST, gt=0, le=MAX_BOOST)

    @field_validator("phrase")
    @classmethod
    def _words(cls, phrase: str) -> str:
        phrase_words(phrase)  # the recognizer's own check: blank, control characters, no word, too many
        return phrase


Hotwords = Annotated[list[Hotword], Field(max_length=MAX_HOTWORDS)]
HOTWORDS = TypeAdapter(Hotwords)  # the REST routes' `hotwords` field: a JSON array of Hotword


class StartMessage(BaseModel):
    """Opens a stream. Audio frames after it are in `encoding` at `sample_rate` Hz, mono."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["start"]
    sample_rate: int = SAMPLE_RATE  # the model's rate (the pinned front end): no resampling
    encoding: Literal["pcm_s16le", "f32le"] = "pcm_s16le"
    interim_results: bool = True
    endpointing: bool = True
    # The token decoder of this stream (None: the server's default). Only decoders the server
    # was started with are accepted (`ws.py` answers `bad_message` otherwise).
    decoder: Literal["greedy", "beam", "phones"] | None = None
    # This stream's endpoint rules (None: the server's); see EndpointRules.
    endpoint: EndpointRules | None = None
    # Also send the VAD head's per-frame p(speech) as `activity` messages (a live display).
    speech_activity: bool = False
    # Speaker turns (docs/server.md, Speaker turns): finals and words carry `speaker` ("S1", ...,
    # or an enrolled name) and `speaker_change` messages mark new turns. Off unless asked: it
    # runs the speaker head's pooling per stream. Enrolled speakers turn it on too.
    speakers: bool = False
    enrolled_speakers: list[EnrolledSpeaker] = Field(default=[], max_length=MAX_ENROLLED)
    # Cosine similarity to an enrolled reference under which a speaker stays anonymous.
    enrol_similarity: float = Field(default=SpeakerTurnConfig.enrol_similarity, ge=-1.0, le=1.0,
                                    allow_inf_nan=False)
    # Phrases the beam decoders favour on this stream (needs a 'beam' or 'phones' decoder).
    hotwords: Hotwords = []

    @field_validator("enrolled_speakers")
    @classmethod
    def _distinct_names(cls, enrolled: list[EnrolledSpeaker]) -> list[EnrolledSpeaker]:
        names = [e.name for e in enrolled]
        if len(set(names)) != len(names):
            raise ValueError("enrolled speaker names must be distinct")
        if clash := [n for n in names if re.fullmatch(r"S\d+", n)]:
            raise ValueError(f"enrolled name {clash[0]!r} looks like an anonymous label (S1, S2, ...); choose another")
        return enrolled

    def speaker_turns(self) -> tuple[SpeakerTurnConfig | None, dict[str, list[float]]]:
        """The stream's speaker-turn config (None: off) and its enrolled references."""
        if not (self.speakers or self.enrolled_speakers):
            return None, {}
        config = dataclasses.replace(SpeakerTurnConfig(), enrol_similarity=self.enrol_similarity)
        return config, {e.name: e.embedding for e in self.enrolled_speakers}
    def hotword_pairs(self) -> list[tuple[str, float]]:
        """The stream's hotwords as `StreamingRecognizer.new_stream` takes them."""
        return [(h.phrase, h.boost) for h in self.hotwords]

    # For browsers, which cannot set an Authorization header on a WebSocket. Never logged.
    api_key: str | None = Field(default=None, max_length=1024, repr=False)


class StopMessage(BaseModel):
    """No more audio: the server decodes what it holds, sends the last final(s) and `end`."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["stop"]


ClientMessage = Annotated[Union[StartMessage, StopMessage], Field(discriminator="type")]
CLIENT_MESSAGE = TypeAdapter(ClientMessage)
CLIENT_TYPES = ("start", "stop")


# ----------------------------------------------------------------------------- server → client


class WordOut(BaseModel):
    word: str
    start: float
    end: float
    confidence: float
    speaker: str | None = None  # only with speaker turns (left out of the JSON otherwise)


class PartialMessage(BaseModel):
    """`text` = `stable` + " " + `unstable` (either may be empty; `text` is for older clients)."""

    type: Literal["partial"] = "partial"
    text: str
    stable: str = ""
    unstable: str = ""


class FinalMessage(BaseModel):
    type: Literal["final"] = "final"
    text: str
    start: float
    end: float
    words: list[WordOut]
    speaker: str | None = None  # only with speaker turns (left out of the JSON otherwise)


class SpeakerChangeMessage(BaseModel):
    """A new speaker turn: `speaker` talks from `start` (stream seconds); `previous` spoke before
    (left out for the stream's first turn); confirmed at stream time `detected_at`."""

    type: Literal["speaker_change"] = "speaker_change"
    speaker: str
    previous: str | None = None
    start: float
    detected_at: float


class ActivityMessage(BaseModel):
    """The VAD head's p(speech) of each encoder frame of one chunk: frame i covers
    [start + i * frame_s, start + (i + 1) * frame_s) seconds of the stream."""

    type: Literal["activity"] = "activity"
    start: float
    frame_s: float
    speech: list[float]


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


class EndMessage(BaseModel):
    type: Literal["end"] = "end"


ServerMessage = Annotated[
    Union[PartialMessage, FinalMessage, ActivityMessage, SpeakerChangeMessage, ErrorMessage, EndMessage],
    Field(discriminator="type")
]
SERVER_MESSAGE = TypeAdapter(ServerMessage)


def event_message(event: PartialEvent | FinalEvent | SpeechActivityEvent | SpeakerChangeEvent) \
        -> PartialMessage | FinalMessage | ActivityMessage | SpeakerChangeMessage:
    """A recognizer event as its wire message (send it with `exclude_none`)."""
    if isinstance(event, SpeakerChangeEvent):
        return SpeakerChangeMessage(speaker=event.speaker, previous=event.previous, start=event.start,
                                    detected_at=event.detected_at)
    if isinstance(event, PartialEvent):
        return PartialMessage(text=event.text, stable=event.stable, unstable=event.unstable)
    if isinstance(event, SpeechActivityEvent):
        return ActivityMessage(start=event.start, frame_s=event.frame_shift_s, speech=list(event.speech))
    return FinalMessage(
        text=event.text,
        start=event.start,
        end=event.end,
        words=words_out(event),
        speaker=event.speaker,
    )


def words_out(final: FinalEvent) -> list[WordOut]:
    """A final's words on the wire, each with its speaker when the stream has speaker turns."""
    who = final.word_speakers or (None,) * len(final.words)
    return [WordOut(word=w.word, start=w.start, end=w.end, confidence=w.confidence, speaker=s)
            for w, s in zip(final.words, who)]


def decode_frame(data: bytes, encoding: str) -> np.ndarray:
    """A binary audio frame → float32 samples (N,) in [-1, 1]. Raises ValueError with the reason."""
    dtype, scale = ENCODINGS[encoding]
    if len(data) % dtype.itemsize:
        raise ValueError(
            f"a {encoding} frame must hold whole {dtype.itemsize}-byte samples; got {len(data)} bytes"
        )
    samples = np.frombuffer(data, dtype=dtype).astype(np.float32)
    if scale != 1.0:
        samples /= scale
    elif not np.all(np.isfinite(samples)):
        raise ValueError("f32le frame contains NaN or infinity")
    return samples


# ----------------------------------------------------------------------------- HTTP


class Segment(BaseModel):
    """One utterance of a file (`/v1/transcribe`, OpenAI `verbose_json`)."""

    id: int
    start: float
    end: float
    text: str
    words: list[WordOut] = []
    speaker: str | None = None  # with `?speakers=true`


class TranscribeResponse(BaseModel):
    """`POST /v1/transcribe`: the text, the audio duration and the utterances."""

    text: str
    duration: float
    segments: list[Segment]


class OpenAITranscription(BaseModel):
    """`response_format=json` of `POST /v1/audio/transcriptions`."""

    text: str


class OpenAISegment(BaseModel):
    id: int
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int] = []
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 1.0
    no_speech_prob: float = 0.0
    speaker: str | None = None  # an extra field (OpenAI has none here); when the model has a speaker head


class OpenAIWord(BaseModel):
    word: str
    start: float
    end: float


class OpenAIVerboseTranscription(BaseModel):
    """`response_format=verbose_json`: segments and/or words by `timestamp_granularities[]`."""

    task: str = "transcribe"
    language: str = "english"
    duration: float
    text: str
    segments: list[OpenAISegment] | None = None
    words: list[OpenAIWord] | None = None


class DiarizedSegment(BaseModel):
    """One utterance of `response_format=diarized_json`, in the shape of OpenAI's
    (`gpt-4o-transcribe-diarize`): an id string, times, text, the speaker's label."""

    type: Literal["transcript.text.segment"] = "transcript.text.segment"
    id: str
    start: float
    end: float
    text: str
    speaker: str  # "unknown" where too little speech came before the utterance's end to tell


class DiarizedTranscription(BaseModel):
    """`response_format=diarized_json`: the text and its speaker-labelled segments."""

    task: str = "transcribe"
    duration: float
    text: str
    segments: list[DiarizedSegment]


class SpeakerEmbedding(BaseModel):
    """`POST /v1/speakers/embedding`: a reference for `start.enrolled_speakers` (unit length),
    the windows of speech it pools, and how many voices the file seemed to hold (more than 1:
    the embedding is the voice heard most)."""

    embedding: list[float]
    windows: int
    voices: int


class HTTPErrorBody(BaseModel):
    message: str
    type: str
    code: ErrorCode
    param: str | None = None


class HTTPError(BaseModel):
    error: HTTPErrorBody


class ModelCard(BaseModel):
    """One entry of `GET /v1/models` (OpenAI's model object)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mtspeech"


class ModelList(BaseModel):
    """`GET /v1/models`: OpenAI's list shape, so `client.models.list()` works."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    """`ok`; `shutting_down` (draining); `unhealthy` (the decoding consumer is not running:
    answered with 503 so a load balancer takes the replica out)."""

    status: Literal["ok", "shutting_down", "unhealthy"]
    streams_open: int
    max_streams: int
