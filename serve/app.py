"""The mtspeech inference server: a FastAPI app around one `StreamingRecognizer`.

Routes: `WS /v1/stream` (streaming protocol, serve/protocol.py), `POST /v1/transcribe`
(raw body or multipart `file`), OpenAI-compatible `POST /v1/audio/transcriptions`,
`GET /healthz`, `GET /metrics` (Prometheus), `GET /` (microphone page).

The server only moves bytes: connections `accept` audio into their stream on the event loop
and the `Batcher` decodes every ready stream in batched steps on one worker thread. The
`Server` below holds the shared state; `create_app` wires it to routes; `main` runs uvicorn
with a shutdown that first finalizes open streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from mtspeech.streaming import SAMPLE_RATE, FinalEvent, StreamingConfig, StreamingRecognizer
from serve.batcher import END, Batcher, Job, Outgoing
from serve.limits import ServerSettings, StreamSlots, authorized
from serve.metrics import Metrics
from serve import protocol as P

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
FILE_FEED_SAMPLES = SAMPLE_RATE  # HTTP files enter their stream one second at a time


class APIError(Exception):
    """An HTTP error answered as `{"error": {...}}` (OpenAI's shape)."""

    def __init__(self, status: int, code: P.ErrorCode, message: str, param: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


class Server:
    """Shared state of one app: recognizer, batcher, limits, metrics, open connections."""

    def __init__(self, recognizer: StreamingRecognizer, settings: ServerSettings) -> None:
        self.recognizer = recognizer
        self.settings = settings
        self.metrics = Metrics()
        self.slots = StreamSlots(settings.max_streams)
        self.batcher = Batcher(recognizer, settings.max_batch_size, settings.max_wait_ms, self.metrics)
        self.connections: set[StreamConnection] = set()
        self.shutting_down = False

    def open_slot(self) -> bool:
        if self.shutting_down or not self.slots.try_acquire():
            return False
        self.metrics.streams_open.set(self.slots.in_use)
        return True

    def close_slot(self) -> None:
        self.slots.release()
        self.metrics.streams_open.set(self.slots.in_use)

    async def drain(self) -> None:
        """Graceful shutdown: refuse new streams, finalize open ones, wait (bounded) for them."""
        if self.shutting_down:
            return
        self.shutting_down = True
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.connections:
            log.warning("%d streams still open after %.1f s of shutdown", len(self.connections),
                        self.settings.shutdown_timeout_s)

    async def transcribe(self, samples: np.ndarray, endpointing: bool = True) -> list[FinalEvent]:
        """Decode a 16 kHz recording through the batcher (HTTP endpoints). Raises APIError."""
        if not self.open_slot():
            self.metrics.errors.labels(P.ErrorCode.too_many_streams.value).inc()
            raise APIError(503, P.ErrorCode.too_many_streams,
                           f"server at capacity ({self.settings.max_streams} streams); retry later",
                           headers={"Retry-After": "1"})
        job = None
        try:
            stream = self.recognizer.new_stream(SAMPLE_RATE, endpointing=endpointing, interim=False)
            job = self.batcher.add(stream, source="file", feed=_pieces(samples, FILE_FEED_SAMPLES))
            finals = []
            while (out := await job.outbox.get()) is not END:
                if isinstance(out.item, P.ErrorMessage):
                    raise APIError(500, out.item.code, out.item.message)
                if isinstance(out.item, FinalEvent):
                    finals.append(out.item)
            self.metrics.audio_seconds.labels("file").inc(len(samples) / SAMPLE_RATE)
            return finals
        finally:
            if job is not None and not job.done:
                self.batcher.remove(job)
            self.close_slot()


def _pieces(samples: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(samples), size):
        yield samples[i : i + size]


# ----------------------------------------------------------------------------- WebSocket


class StreamConnection:
    """One `/v1/stream` WebSocket: reads client messages, writes events from its outbox.

    Every message to the client goes through `outbox` (a single writer keeps order); the
    batcher puts events there, the reader puts errors there, `END` ends the writer.
    """

    def __init__(self, ws: WebSocket, server: Server) -> None:
        self.ws = ws
        self.server = server
        self.settings = server.settings
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.job: Job | None = None
        self.start: P.StartMessage | None = None
        self.close_code = 1000
        self.stopping = False

    # -- outgoing ------------------------------------------------------------------------------

    def error(self, code: P.ErrorCode, message: str) -> None:
        self.outbox.put_nowait(Outgoing(P.ErrorMessage(code=code, message=message), None))

    def terminate(self, code: P.ErrorCode, message: str, close_code: int) -> None:
        """A fatal error: tell the client, end without flushing, close with `close_code`."""
        self.error(code, message)
        self.outbox.put_nowait(END)
        self.close_code = close_code
        if self.job is not None:
            self.server.batcher.remove(self.job)

    def finish(self, closing_error: P.ErrorMessage | None = None, close_code: int = 1000) -> None:
        """Stop reading audio; the batcher flushes the stream, sends finals, then END."""
        self.stopping = True
        self.close_code = close_code
        if self.job is not None:
            self.server.batcher.finish(self.job, closing_error)
        else:
            if closing_error is not None:
                self.outbox.put_nowait(Outgoing(closing_error, None))
            self.outbox.put_nowait(END)

    def shutdown(self) -> None:
        """Server shutdown: finalize this stream and say why."""
        if not self.stopping:
            self.finish(P.ErrorMessage(code=P.ErrorCode.shutting_down,
                                       message="server is shutting down; the stream was finalized"), 1001)

    async def _writer(self) -> None:
        m = self.server.metrics
        while (out := await self.outbox.get()) is not END:
            item = out.item
            msg = item if isinstance(item, P.ErrorMessage) else P.event_message(item)
            await self.ws.send_text(msg.model_dump_json())
            if isinstance(item, P.ErrorMessage):
                m.errors.labels(item.code.value).inc()
            elif out.since is not None:
                hist = m.partial_latency if msg.type == "partial" else m.final_latency
                hist.observe(time.monotonic() - out.since)
        await self.ws.send_text(P.EndMessage().model_dump_json())

    # -- incoming ------------------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer())
        gone = False
        try:
            gone = await self._reader(writer)
            if not gone:
                await writer
        except Exception as e:  # a send to a vanished client, or a bug: never crash the server
            gone = True
            log.debug("stream connection ended: %r", e)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if self.job is not None and not self.job.done:
                self.server.batcher.remove(self.job)
            if gone:
                self.server.metrics.errors.labels(P.ErrorCode.client_disconnected.value).inc()
            else:
                with contextlib.suppress(Exception):
                    await self.ws.close(self.close_code)

    async def _reader(self, writer: asyncio.Task) -> bool:
        """Read until stop / a terminal error (False) or the client vanishing (True)."""
        while not self.stopping and not writer.done():
            receive = asyncio.ensure_future(self.ws.receive())
            done, _ = await asyncio.wait({receive, writer}, timeout=self.settings.idle_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receive
                if writer.done():  # END was sent after a terminal error, or a send failed:
                    return False  # run() awaits the writer, whose exception means "client gone"
                msg = f"no message for {self.settings.idle_timeout_s:g} s; closing the stream"
                self.finish(P.ErrorMessage(code=P.ErrorCode.idle_timeout, message=msg))
                return False
            msg = receive.result()
            if msg["type"] == "websocket.disconnect":
                return True
            if msg.get("bytes") is not None:
                self._on_audio(msg["bytes"])
            elif msg.get("text") is not None:
                self._on_text(msg["text"])
        return False

    def _on_text(self, text: str) -> None:
        if len(text) > self.settings.max_frame_bytes:
            self.terminate(P.ErrorCode.frame_too_large,
                           f"text frame of {len(text)} bytes exceeds the {self.settings.max_frame_bytes}-byte limit",
                           1009)
            return
        try:
            data = json.loads(text)
        except ValueError:
            self.error(P.ErrorCode.bad_json, f"text frames must be JSON objects; got {text[:60]!r}")
            return
        if not isinstance(data, dict):
            self.error(P.ErrorCode.bad_json, f"text frames must be JSON objects; got {text[:60]!r}")
            return
        if data.get("type") not in P.CLIENT_TYPES:
            self.error(P.ErrorCode.unknown_type,
                       f"unknown message type {data.get('type')!r}; expected one of {list(P.CLIENT_TYPES)}")
            return
        try:
            message = P.CLIENT_MESSAGE.validate_python(data)
        except ValidationError as e:
            detail = "; ".join(f"{'.'.join(map(str, err['loc'][1:])) or 'message'}: {err['msg']}"
                               for err in e.errors())
            self.error(P.ErrorCode.bad_message, f"invalid {data['type']!r} message: {detail}")
            return
        if isinstance(message, P.StartMessage):
            self._on_start(message)
        else:
            self.finish()

    def _on_start(self, start: P.StartMessage) -> None:
        s = self.settings
        if self.start is not None:
            self.error(P.ErrorCode.already_started, "the stream is already started; send audio or stop")
            return
        if not s.min_sample_rate <= start.sample_rate <= s.max_sample_rate:
            self.error(P.ErrorCode.unsupported_sample_rate,
                       f"sample_rate {start.sample_rate} Hz is not supported; use {s.min_sample_rate}"
                       f"..{s.max_sample_rate} Hz (audio is resampled to {SAMPLE_RATE} Hz)")
            return
        self.start = start
        stream = self.server.recognizer.new_stream(start.sample_rate, endpointing=start.endpointing,
                                                   interim=start.interim_results)
        self.job = self.server.batcher.add(stream, outbox=self.outbox)

    def _on_audio(self, data: bytes) -> None:
        s = self.settings
        if len(data) > s.max_frame_bytes:
            self.terminate(P.ErrorCode.frame_too_large,
                           f"audio frame of {len(data)} bytes exceeds the {s.max_frame_bytes}-byte limit; "
                           "send smaller frames (e.g. 100 ms)", 1009)
            return
        if self.job is None:
            self.error(P.ErrorCode.audio_before_start, 'audio before {"type": "start"}; frame dropped')
            return
        try:
            samples = P.decode_frame(data, self.start.encoding)
            self.server.recognizer.accept(self.job.stream, samples)
        except ValueError as e:
            self.error(P.ErrorCode.bad_audio, f"{e}; frame dropped")
            return
        self.server.metrics.audio_seconds.labels("stream").inc(len(samples) / self.start.sample_rate)
        self.server.batcher.notify(self.job)
        if self.job.stream.audio_seconds > s.max_stream_seconds:
            self.finish(P.ErrorMessage(code=P.ErrorCode.stream_too_long,
                                       message=f"stream exceeds {s.max_stream_seconds:g} s of audio; finalized"))


# ----------------------------------------------------------------------------- HTTP helpers


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
        raise APIError(400, P.ErrorCode.bad_request, f"malformed multipart body: {e}") from e


async def _form_file(form, name: str = "file") -> bytes:
    upload = form.get(name)
    if not isinstance(upload, UploadFile):
        raise APIError(400, P.ErrorCode.bad_request, f"multipart field {name!r} with the audio file is missing",
                       param=name)
    return await upload.read()


def _decode_upload(data: bytes, settings: ServerSettings) -> np.ndarray:
    """Encoded audio file bytes → float32 samples (S,) at 16 kHz; 4xx APIError when unusable."""
    from mtspeech.data.audio import AudioError, decode_audio_bytes

    if not data:
        raise APIError(400, P.ErrorCode.empty_file, "the uploaded file is empty", param="file")
    try:
        wav = decode_audio_bytes(data, SAMPLE_RATE, name="upload")
    except AudioError as e:
        if "no samples" in e.reason:
            raise APIError(400, P.ErrorCode.empty_file, f"the uploaded file {e.reason}", param="file") from e
        raise APIError(415, P.ErrorCode.unsupported_audio, f"uploaded file: {e.reason}", param="file") from e
    samples = wav.numpy().astype(np.float32) if hasattr(wav, "numpy") else np.asarray(wav, np.float32)
    if samples.size == 0:
        raise APIError(400, P.ErrorCode.empty_file, "the uploaded file holds no audio samples", param="file")
    if samples.size / SAMPLE_RATE > settings.max_file_seconds:
        raise APIError(413, P.ErrorCode.file_too_large,
                       f"audio of {samples.size / SAMPLE_RATE:.1f} s exceeds {settings.max_file_seconds:g} s")
    return samples


def _segments(finals: list[FinalEvent]) -> list[P.Segment]:
    return [P.Segment(id=i, start=f.start, end=f.end, text=f.text,
                      words=[P.WordOut(word=w.word, start=w.start, end=w.end, confidence=w.confidence)
                             for w in f.words])
            for i, f in enumerate(finals)]


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _subtitles(finals: list[FinalEvent], vtt: bool) -> str:
    """SRT (numbered cues, comma before milliseconds) or WebVTT."""
    sep = "." if vtt else ","
    blocks = []
    for i, f in enumerate(finals):
        number = "" if vtt else f"{i + 1}\n"
        blocks.append(f"{number}{_timestamp(f.start, sep)} --> {_timestamp(f.end, sep)}\n{f.text}\n")
    return ("WEBVTT\n\n" if vtt else "") + "\n".join(blocks)


# ----------------------------------------------------------------------------- the app


def create_app(recognizer_or_model_path: StreamingRecognizer | str | Path,
               settings: ServerSettings | None = None, streaming: StreamingConfig | None = None,
               device: str = "cpu") -> FastAPI:
    """The FastAPI app serving a recognizer (or a checkpoint path, loaded here)."""
    settings = settings or ServerSettings()
    recognizer = recognizer_or_model_path
    if not isinstance(recognizer, StreamingRecognizer):
        recognizer = StreamingRecognizer.from_checkpoint(recognizer_or_model_path, streaming, device)
    server = Server(recognizer, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        yield
        await server.drain()
        await server.batcher.stop()

    app = FastAPI(title="mtspeech", version="0.1.0", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        server.metrics.errors.labels(exc.code.value).inc()
        kind = "server_error" if exc.status >= 500 else "invalid_request_error"
        body = P.HTTPError(error=P.HTTPErrorBody(message=exc.message, type=kind, code=exc.code, param=exc.param))
        return JSONResponse(body.model_dump(mode="json"), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return await _api_error(request, APIError(400, P.ErrorCode.bad_request, str(exc.errors())))

    def check_key(request: Request) -> None:
        if not authorized(request, settings.api_key):
            raise APIError(401, P.ErrorCode.unauthorized, "missing or wrong API key (Authorization: Bearer KEY)")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", response_model=P.Health)
    async def healthz():
        status = "shutting_down" if server.shutting_down else "ok"
        return P.Health(status=status, streams_open=server.slots.in_use, max_streams=settings.max_streams)

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/transcribe", response_model=P.TranscribeResponse)
    async def transcribe(request: Request, endpointing: bool = True):
        """Audio file as the raw body (any container soundfile reads) or multipart `file`."""
        check_key(request)
        body = await _read_body(request, settings.max_upload_bytes)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            body = await _form_file(await _read_form(request, body))
        samples = _decode_upload(body, settings)
        finals = await server.transcribe(samples, endpointing)
        return P.TranscribeResponse(text=" ".join(f.text for f in finals),
                                    duration=round(len(samples) / SAMPLE_RATE, 3), segments=_segments(finals))

    @app.post("/v1/audio/transcriptions")
    async def openai_transcriptions(request: Request):
        """OpenAI's transcription API: multipart `file`, `model`, `response_format`,
        `timestamp_granularities[]` (`language`, `prompt`, `temperature` are accepted, ignored)."""
        check_key(request)
        form = await _read_form(request, await _read_body(request, settings.max_upload_bytes))
        fmt = str(form.get("response_format") or "json")
        if fmt not in ("json", "text", "verbose_json", "srt", "vtt"):
            raise APIError(400, P.ErrorCode.bad_request,
                           f"response_format {fmt!r} is not supported; use json, text, verbose_json, srt or vtt",
                           param="response_format")
        granularities = set(form.getlist("timestamp_granularities[]") or form.getlist("timestamp_granularities"))
        if granularities - {"word", "segment"}:
            raise APIError(400, P.ErrorCode.bad_request, f"timestamp_granularities {sorted(granularities)}: "
                           "expected 'word' and/or 'segment'", param="timestamp_granularities[]")
        samples = _decode_upload(await _form_file(form), settings)
        finals = await server.transcribe(samples)
        text = " ".join(f.text for f in finals)
        if fmt == "text":
            return PlainTextResponse(text + "\n")
        if fmt in ("srt", "vtt"):
            return PlainTextResponse(_subtitles(finals, fmt == "vtt"))
        if fmt == "json":
            return P.OpenAITranscription(text=text)
        granularities = granularities or {"segment"}
        out = P.OpenAIVerboseTranscription(duration=round(len(samples) / SAMPLE_RATE, 3), text=text)
        if "segment" in granularities:
            out.segments = [P.OpenAISegment(id=i, start=f.start, end=f.end, text=f.text, tokens=list(f.tokens))
                            for i, f in enumerate(finals)]
        if "word" in granularities:
            out.words = [P.OpenAIWord(word=w.word, start=w.start, end=w.end) for f in finals for w in f.words]
        return JSONResponse(out.model_dump(mode="json", exclude_none=True))

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket):
        await ws.accept()
        if not authorized(ws, settings.api_key):
            return await _refuse(ws, server, P.ErrorCode.unauthorized,
                                 "missing or wrong API key (Authorization: Bearer KEY or ?api_key=)", 1008)
        if server.shutting_down:
            return await _refuse(ws, server, P.ErrorCode.shutting_down, "server is shutting down", 1001)
        if not server.open_slot():
            return await _refuse(ws, server, P.ErrorCode.too_many_streams,
                                 f"server at capacity ({settings.max_streams} streams); retry later", 1013)
        conn = StreamConnection(ws, server)
        server.connections.add(conn)
        try:
            await conn.run()
        finally:
            server.connections.discard(conn)
            server.close_slot()

    return app


async def _refuse(ws: WebSocket, server: Server, code: P.ErrorCode, message: str, close_code: int) -> None:
    """Tell a client why it is not served, then close with `close_code` and the reason."""
    server.metrics.errors.labels(code.value).inc()
    with contextlib.suppress(Exception):
        await ws.send_text(P.ErrorMessage(code=code, message=message).model_dump_json())
        await ws.close(close_code, reason=message[:120])


# ----------------------------------------------------------------------------- running it


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    """Serve `app` with uvicorn until interrupted; open streams are finalized before exit."""
    server = build_uvicorn(app, host, port, log_level)
    server.run()


def build_uvicorn(app: FastAPI, host: str, port: int, log_level: str = "info"):
    """A uvicorn Server whose shutdown first drains open streams (tests run it in a thread)."""
    import uvicorn

    settings: ServerSettings = app.state.server.settings

    class GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            # uvicorn closes WebSockets before the app's lifespan shutdown runs, so drain first.
            await app.state.server.drain()
            await super().shutdown(sockets)

    # Frames up to 4x the limit reach the app and get a clear error; larger ones are cut by uvicorn.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            ws_max_size=4 * settings.max_frame_bytes + 1024, lifespan="on")
    return GracefulServer(config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`mtspeech serve` flags."""
    d = ServerSettings()
    parser.add_argument("--model", required=True, help="checkpoint to serve (from `mtspeech train`)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--max-streams", type=int, default=d.max_streams, help="concurrent streams (then 503/1013)")
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    parser.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="wait for a fuller batch")
    parser.add_argument("--max-frame-bytes", type=int, default=d.max_frame_bytes)
    parser.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes)
    parser.add_argument("--max-stream-seconds", type=float, default=d.max_stream_seconds)
    parser.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, help="seconds without a message")
    parser.add_argument("--api-key", default=None, help="require this key (default: env MTSPEECH_API_KEY)")
    parser.add_argument("--chunk-frames", type=int, default=StreamingConfig.chunk_frames,
                        help="encoder frames (40 ms) per chunk")
    parser.add_argument("--left-chunks", type=int, default=StreamingConfig.left_chunks)
    parser.add_argument("--endpoint-mode", choices=["vad", "blank"], default="vad")
    parser.add_argument("--log-level", default="info")


def main(args: argparse.Namespace) -> int:
    """Run `mtspeech serve`."""
    import os

    from mtspeech.endpoint import EndpointConfig

    settings = ServerSettings(
        max_streams=args.max_streams, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        max_frame_bytes=args.max_frame_bytes, max_upload_bytes=args.max_upload_bytes,
        max_stream_seconds=args.max_stream_seconds, idle_timeout_s=args.idle_timeout,
        api_key=args.api_key or os.environ.get("MTSPEECH_API_KEY") or None,
    )
    streaming = StreamingConfig(chunk_frames=args.chunk_frames, left_chunks=args.left_chunks,
                                endpoint=EndpointConfig(mode=args.endpoint_mode))
    app = create_app(args.model, settings, streaming, args.device)
    run(app, args.host, args.port, args.log_level)
    return 0
