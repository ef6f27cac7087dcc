"""Wire formats of the server: the protocol's single source of truth.

WebSocket `/v1/stream` (see docs/server.md):

    client → {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", ...}
    client → binary frames of audio in that encoding (any size up to the frame limit)
    client → {"type": "stop"}                 flush: the server finalizes and answers "end"
    server → {"type": "partial", "text", "stable", "unstable"}  the utterance in progress:
                                              `stable` words only ever extend, `unstable` may change
    server → {"type": "final", "text", "start", "end", "words": [...]}   times in seconds
    server → {"type": "error", "code", "message"}
    server → {"type": "end"}                  nothing more follows; the server closes

HTTP errors use OpenAI's shape, `{"error": {"message", "type", "code", "param"}}`, so the
official `openai` client reports them as it does for OpenAI itself.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from mtspeech.streaming import FinalEvent, PartialEvent

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


class StartMessage(BaseModel):
    """Opens a stream. Audio frames after it are in `encoding` at `sample_rate` Hz, mono."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["start"]
    sample_rate: int = 16000
    encoding: Literal["pcm_s16le", "f32le"] = "pcm_s16le"
    interim_results: bool = True
    endpointing: bool = True
    # The token decoder of this stream (None: the server's default). Only decoders the server
    # was started with are accepted (`ws.py` answers `bad_message` otherwise).
    decoder: Literal["greedy", "beam", "phones"] | None = None
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


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


class EndMessage(BaseModel):
    type: Literal["end"] = "end"


ServerMessage = Annotated[
    Union[PartialMessage, FinalMessage, ErrorMessage, EndMessage], Field(discriminator="type")
]
SERVER_MESSAGE = TypeAdapter(ServerMessage)


def event_message(event: PartialEvent | FinalEvent) -> PartialMessage | FinalMessage:
    """A recognizer event as its wire message."""
    if isinstance(event, PartialEvent):
        return PartialMessage(text=event.text, stable=event.stable, unstable=event.unstable)
    return FinalMessage(
        text=event.text,
        start=event.start,
        end=event.end,
        words=[WordOut(word=w.word, start=w.start, end=w.end, confidence=w.confidence) for w in event.words],
    )


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
