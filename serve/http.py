"""The REST routes: `/v1/transcribe`, OpenAI's `/v1/audio/transcriptions` and `/v1/models`,
`/healthz`, `/metrics`.

An upload is never decoded whole. Its header is read first (`soundfile.info`), so a file
whose duration is over `max_file_seconds` is refused before one sample is decoded (a 1 MB
FLAC can hold hours of silence). Then it is decoded one second at a time on a worker thread
and fed to its stream through `Server.feed`, the same path and backpressure as a live
stream, so memory per upload stays a few seconds of audio whatever the file holds. A client
that disconnects frees its slot at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from mtspeech.serve import protocol as P
from mtspeech.serve.answers import diarized, segments, subtitles, tells_speakers
from mtspeech.serve.batcher import END, Job
from mtspeech.serve.limits import ServerSettings, request_key
from mtspeech.serve.routing import ServedModel
from mtspeech.serve.server import APIError, Server
from mtspeech.streaming import FinalEvent, Stream
from mtspeech.streaming.speakers import SpeakerTurnConfig

log = logging.getLogger(__name__)
router = APIRouter()

BLOCK_SECONDS = 1.0  # files are decoded and fed this much at a time
MAX_FILE_RATE = 384_000
FORMATS = ("json", "text", "verbose_json", "srt", "vtt", "diarized_json")  # of /v1/audio/transcriptions
# An error that ends a file's stream → the HTTP status it is answered with.
STATUS = {P.ErrorCode.file_too_large: 413, P.ErrorCode.bad_audio: 400, P.ErrorCode.unsupported_audio: 415,
          P.ErrorCode.shutting_down: 503}


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


def _server(request: Request) -> Server:
    return request.app.state.server


def _model(request: Request) -> ServedModel:
    """The model the request's key chooses (serve/routing.py); 401 for a key the server refuses."""
    model = _server(request).router.route(request_key(request))
    if model is None:
        raise APIError(401, P.ErrorCode.unauthorized, "missing or wrong API key (Authorization: Bearer KEY)")
    return model


# ----------------------------------------------------------------------------- uploads


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes without reading it all first."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, P.ErrorCode.file_too_large, f"upload of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, P.ErrorCode.file_too_large, f"upload exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_form(request: Request, body: bytes):
    """Parse a multipart body already read (and size-checked) by `_read_body`."""
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=2, max_fields=50)
    except Exception as e:
        raise APIError(400, P.ErrorCode.bad_request, f"malformed multipart body: {str(e)[:200]}") from e


async def _form_file(form, name: str = "file") -> bytes:
    upload = form.get(name)
    if not isinstance(upload, UploadFile):
        raise APIError(400, P.ErrorCode.bad_request, f"multipart field {name!r} with the audio file is missing",
                       param=name)
    return await upload.read()


@dataclass(frozen=True)
class AudioFile:
    """An upload whose header was read: its bytes, rate and length (nothing decoded yet)."""

    data: bytes
    sample_rate: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    def blocks(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks of `BLOCK_SECONDS`, decoded as they are asked for."""
        with soundfile.SoundFile(io.BytesIO(self.data)) as f:
            size = max(1, int(self.sample_rate * BLOCK_SECONDS))
            while True:
                block = f.read(size, dtype="float32", always_2d=True)
                if len(block) == 0:
                    return
                yield block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]


def probe_upload(data: bytes, settings: ServerSettings) -> AudioFile:
    """Read an upload's header only; refuse empty, undecodable, too long or odd-rate files."""
    if not data:
        raise APIError(400, P.ErrorCode.empty_file, "the uploaded file is empty", param="file")
    try:
        info = soundfile.info(io.BytesIO(data))
    except (RuntimeError, soundfile.LibsndfileError, OSError, EOFError, ValueError) as e:
        raise APIError(415, P.ErrorCode.unsupported_audio,
                       f"uploaded file: cannot decode audio ({str(e)[:200]}); send WAV, FLAC or OGG",
                       param="file") from None
    if not 1 <= info.samplerate <= MAX_FILE_RATE:
        raise APIError(415, P.ErrorCode.unsupported_audio,
                       f"uploaded file: sample rate {info.samplerate} Hz; expected 1..{MAX_FILE_RATE} Hz", param="file")
    if info.frames <= 0:
        raise APIError(400, P.ErrorCode.empty_file, "the uploaded file holds no audio samples", param="file")
    seconds = info.frames / info.samplerate
    if seconds > settings.max_file_seconds:
        raise APIError(413, P.ErrorCode.file_too_large,
                       f"audio of {seconds:.1f} s exceeds {settings.max_file_seconds:g} s (read from the "
                       "file's header; nothing was decoded)")
    return AudioFile(data, int(info.samplerate), int(info.frames))


async def _produce(server: Server, job: Job, audio: AudioFile) -> None:
    """Decode `audio` block by block off the loop into `job`'s stream; then finish the job."""
    loop = asyncio.get_running_loop()
    blocks = audio.blocks()
    try:
        while not job.done:
            block = await loop.run_in_executor(server.audio_pool, next, blocks, None)
            if block is None:
                break
            await server.feed(job, block)
    except ValueError as e:  # samples the recognizer refuses (NaN, far outside [-1, 1])
        server.batcher.abort(job, P.ErrorMessage(code=P.ErrorCode.bad_audio, message=f"uploaded file: {e}"))
        return
    except (RuntimeError, soundfile.LibsndfileError, OSError, EOFError) as e:
        msg = f"uploaded file: decoding failed part way ({str(e)[:200]})"
        server.batcher.abort(job, P.ErrorMessage(code=P.ErrorCode.unsupported_audio, message=msg))
        return
    finally:
        blocks.close()
    server.batcher.finish(job)


async def _until_disconnect(request: Request) -> None:
    """Return when the client goes away (the body was already read, so only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def transcribe(server: Server, request: Request, model: ServedModel, audio: AudioFile,
                     endpointing: bool = True, speakers: bool = False, stream: Stream | None = None,
                     hotwords: list[tuple[str, float]] = ()) -> list[FinalEvent]:
    """Decode an upload with `model` through the batcher; its finals (labelled with speaker turns
    if `speakers`, biased to `hotwords`). `stream`: decode into this one (made by `model`'s
    recognizer; the caller reads its state afterwards) instead of a new one. Raises APIError or
    ClientGone."""
    recognizer = model.recognizer
    if hotwords:
        try:  # built on a thread (spelling new words may take seconds): the stream below finds it built
            await asyncio.to_thread(recognizer.bias, None, hotwords)
        except ValueError as e:  # greedy cannot be biased; a word the phone head cannot spell
            raise APIError(400, P.ErrorCode.bad_request, str(e), param="hotwords") from e
    refused = server.open_slot()
    if refused is not None:
        raise APIError(503, P.ErrorCode.too_many_streams, refused, headers={"Retry-After": "1"})
    try:  # the list was checked above; this guards the slot against any other refusal
        stream = stream or recognizer.new_stream(audio.sample_rate, endpointing=endpointing, interim=False,
                                                 speaker_turns=SpeakerTurnConfig() if speakers else None,
                                                 hotwords=hotwords)
    except ValueError as e:
        server.close_slot()
        raise APIError(400, P.ErrorCode.bad_request, str(e), param="hotwords") from e
    job = server.add_job(model, stream, source="file")
    server.transcriptions.add(job)
    producer = asyncio.create_task(_produce(server, job, audio))
    watcher = asyncio.create_task(_until_disconnect(request))
    try:
        finals: list[FinalEvent] = []
        while True:
            getter = asyncio.ensure_future(job.outbox.get())
            await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                raise ClientGone()
            out = getter.result()
            if out is END:
                break
            if isinstance(out.item, P.ErrorMessage):
                raise APIError(STATUS.get(out.item.code, 500), out.item.code, out.item.message)
            if isinstance(out.item, FinalEvent):
                finals.append(out.item)
        server.metrics.audio_seconds.labels("file").inc(audio.seconds)
        return finals
    finally:
        for task in (producer, watcher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not job.done:
            server.batcher.remove(job)
        server.transcriptions.discard(job)
        server.close_slot()


# ----------------------------------------------------------------------------- routes

# What the OpenAPI schema declares (the routes read their bodies themselves, so that size
# limits apply before anything is parsed): the bodies they take and the errors they answer.
_ERRORS = {status: {"model": P.HTTPError, "description": what} for status, what in (
    (400, "bad request, empty file or bad samples"), (401, "missing or wrong API key"),
    (413, "upload or audio too long"), (415, "undecodable audio"), (500, "internal error (incident id)"),
    (503, "at capacity or shutting down"))}
_BINARY = {"type": "string", "format": "binary"}
_TRANSCRIBE_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": _BINARY},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": _BINARY, "hotwords": {"type": "string"}}}},
}}}
_OPENAI_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": _BINARY, "model": {"type": "string"},
        "response_format": {"type": "string", "enum": list(FORMATS)},
        "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}},
        "language": {"type": "string"}, "prompt": {"type": "string"}, "temperature": {"type": "number"},
        "hotwords": {"type": "string", "description": 'an extra field: JSON array of {"phrase", "boost"}'},
    }}}}}}


def _hotwords(raw) -> list[tuple[str, float]]:
    """The `hotwords` field (a form field or query parameter): a JSON array of
    `{"phrase", "boost"}`, checked by the protocol's `Hotword`; 400 naming the entry otherwise."""
    if raw is None or raw == "":
        return []
    if not isinstance(raw, str):
        raise APIError(400, P.ErrorCode.bad_request, "hotwords: expected a JSON array as a form field, not a file",
                       param="hotwords")
    try:
        items = P.HOTWORDS.validate_json(raw)
    except ValidationError as e:
        detail = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'hotwords'}: {err['msg']}" for err in e.errors()[:3])
        raise APIError(400, P.ErrorCode.bad_request, f"hotwords: {detail[:300]}", param="hotwords") from None
    return [(h.phrase, h.boost) for h in items]


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise APIError(400, P.ErrorCode.bad_request, f"{name}={value[:20]!r}: expected true or false", param=name)


@router.get("/healthz", response_model=P.Health,
            responses={503: {"model": P.Health, "description": "draining (SIGTERM) or the decoding consumer is not running"}})
async def healthz(request: Request):
    server = _server(request)
    if not server.batcher.alive:
        status = "unhealthy"
    else:
        status = "shutting_down" if server.shutting_down else "ok"
    # the whole server's counts (every worker's, under `serve --workers N`)
    total = int(os.environ.get("MTSPEECH_SERVER_MAX_STREAMS") or server.settings.max_streams)
    body = P.Health(status=status, streams_open=server.metrics.open_streams_total(server.slots.in_use),
                    max_streams=total)
    # Readiness: a draining replica answers 503 too, so a load balancer stops sending it work.
    return JSONResponse(body.model_dump(), status_code=200 if status == "ok" else 503)


MODEL_ID = "mtspeech"  # the one model a server has; transcription requests may name any model
_CREATED = int(time.time())  # OpenAI's `created`: here, when the server process started


@router.get("/v1/models", response_model=P.ModelList, responses=_ERRORS)
async def models(request: Request):
    """OpenAI's model list (the SDKs call it, e.g. `client.models.list()`): the one model served
    (an adapted voice is not another model to choose: the key picks it)."""
    _model(request)
    return P.ModelList(data=[P.ModelCard(id=MODEL_ID, created=_CREATED)])


@router.get("/v1/models/{model_id}", response_model=P.ModelCard, responses=_ERRORS)
async def model(request: Request, model_id: str):
    """OpenAI's model retrieval (`client.models.retrieve("mtspeech")`)."""
    _model(request)
    if model_id != MODEL_ID:
        raise APIError(404, P.ErrorCode.model_not_found, f"model {model_id[:80]!r} does not exist; "
                       f"this server has {MODEL_ID!r}", param="model")
    return P.ModelCard(id=MODEL_ID, created=_CREATED)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request):
    return Response(_server(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.post("/v1/transcribe", response_model=P.TranscribeResponse, responses=_ERRORS,
             openapi_extra={**_TRANSCRIBE_BODY, "parameters": [
                 {"name": "endpointing", "in": "query", "required": False, "schema": {"type": "boolean", "default": True}},
                 {"name": "speakers", "in": "query", "required": False, "schema": {"type": "boolean", "default": False}},
                 {"name": "hotwords", "in": "query", "required": False, "schema": {"type": "string"},
                  "description": 'JSON array of {"phrase", "boost"} (or a multipart field of that name)'}]})
async def transcribe_route(request: Request):
    """Audio file as the raw body (any container soundfile reads) or multipart `file`;
    `?endpointing=false` keeps pauses inside utterances; `?speakers=true` labels segments and
    words with speaker turns (a model with a speaker head); `hotwords` (query or form field):
    a JSON array of `{"phrase", "boost"}` the beam decoders favour."""
    server = _server(request)
    settings = server.settings
    model = _model(request)
    endpointing = _flag(request, "endpointing", True)
    speakers = _flag(request, "speakers", False)
    if speakers and not tells_speakers(server):
        raise APIError(400, P.ErrorCode.bad_request, "speakers=true: the served model has no speaker head "
                       "(or its exported graph lacks it)", param="speakers")
    body = await _read_body(request, settings.max_upload_bytes)
    hotwords = request.query_params.get("hotwords")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await _read_form(request, body)
        hotwords = form.get("hotwords", hotwords)
        body = await _form_file(form)
    hotwords = _hotwords(hotwords)
    audio = probe_upload(body, settings)
    finals = await transcribe(server, request, model, audio, endpointing, speakers, hotwords=hotwords)
    out = P.TranscribeResponse(text=" ".join(f.text for f in finals), duration=round(audio.seconds, 3),
                               segments=segments(finals))
    return JSONResponse(out.model_dump(mode="json", exclude_none=True))  # speaker fields only when asked


@router.post("/v1/audio/transcriptions", responses={200: {"description": ", ".join(FORMATS)},
                                                     **_ERRORS}, openapi_extra=_OPENAI_BODY)
async def openai_transcriptions(request: Request):
    """OpenAI's transcription API: multipart `file`, `model`, `response_format`,
    `timestamp_granularities[]` (`language`, `prompt`, `temperature` are accepted, ignored);
    `hotwords`, an extra field, as on `/v1/transcribe`.
    `verbose_json` segments carry `speaker` when the model has a speaker head; `diarized_json`
    (OpenAI's diarizing shape) needs one."""
    server = _server(request)
    settings = server.settings
    model = _model(request)
    form = await _read_form(request, await _read_body(request, settings.max_upload_bytes))
    fmt = str(form.get("response_format") or "json")
    if fmt not in FORMATS:
        raise APIError(400, P.ErrorCode.bad_request,
                       f"response_format {fmt[:40]!r} is not supported; use {', '.join(FORMATS)}",
                       param="response_format")
    if fmt == "diarized_json" and not tells_speakers(server):
        raise APIError(400, P.ErrorCode.bad_request, "response_format diarized_json: the served model has no "
                       "speaker head (or its exported graph lacks it)", param="response_format")
    granularities = set(form.getlist("timestamp_granularities[]") or form.getlist("timestamp_granularities"))
    if granularities - {"word", "segment"}:
        raise APIError(400, P.ErrorCode.bad_request, f"timestamp_granularities {sorted(map(str, granularities))[:4]}: "
                       "expected 'word' and/or 'segment'", param="timestamp_granularities[]")
    hotwords = _hotwords(form.get("hotwords"))
    audio = probe_upload(await _form_file(form), settings)
    # speaker turns cost the speaker head's pooling: only for the formats that show them
    finals = await transcribe(server, request, model, audio,
                              speakers=fmt == "diarized_json" or (fmt == "verbose_json" and tells_speakers(server)),
                              hotwords=hotwords)
    text = " ".join(f.text for f in finals)
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(subtitles(finals, fmt == "vtt"))
    if fmt == "json":
        return P.OpenAITranscription(text=text)
    if fmt == "diarized_json":
        return diarized(finals, audio.seconds)
    granularities = granularities or {"segment"}
    out = P.OpenAIVerboseTranscription(duration=round(audio.seconds, 3), text=text)
    if "segment" in granularities:
        out.segments = [P.OpenAISegment(id=i, start=f.start, end=f.end, text=f.text, tokens=list(f.tokens),
                                        speaker=f.speaker)
                        for i, f in enumerate(finals)]
    if "word" in granularities:
        out.words = [P.OpenAIWord(word=w.word, start=w.start, end=w.end) for f in finals for w in f.words]
    return JSONResponse(out.model_dump(mode="json", exclude_none=True))


@router.post("/v1/speakers/embedding", response_model=P.SpeakerEmbedding, responses=_ERRORS,
             openapi_extra=_TRANSCRIBE_BODY)
async def speaker_embedding(request: Request):
    """A reference for `start.enrolled_speakers`: the speaker head's embedding of an audio file
    of one voice (raw body or multipart `file`), pooled as a stream's speaker turns pool it
    (the centroid of its windows of speech; the largest cluster if it heard several voices)."""
    server = _server(request)
    settings = server.settings
    model = _model(request)
    if not tells_speakers(server):
        raise APIError(400, P.ErrorCode.bad_request, "the served model has no speaker head (or its exported "
                       "graph lacks it): there is nothing to enrol with")
    body = await _read_body(request, settings.max_upload_bytes)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        body = await _form_file(await _read_form(request, body))
    audio = probe_upload(body, settings)
    stream = model.recognizer.new_stream(audio.sample_rate, interim=False, speaker_turns=SpeakerTurnConfig())
    await transcribe(server, request, model, audio, stream=stream)
    voice = stream.speakers.dominant_voice()
    if voice is None:
        raise APIError(400, P.ErrorCode.bad_request, f"the file held too little speech for one embedding "
                       f"(the VAD head found under {SpeakerTurnConfig.min_window_frames} frames); send a few "
                       "seconds of the voice", param="file")
    centroid, windows, voices = voice
    return P.SpeakerEmbedding(embedding=[round(float(x), 6) for x in centroid], windows=windows, voices=voices)
