"""`WS /v1/stream`: the streaming protocol's state machine (messages in serve/protocol.py).

One `StreamConnection` per socket. The reader handles one client message at a time and
awaits `Server.feed` for audio, so while a stream's backlog is over `max_buffered_seconds`
the server simply stops reading that socket and TCP paces the client. Every message to the
client goes through `outbox` (a single writer keeps order); the batcher puts events there,
the reader puts errors there, `END` ends the writer.

The API key picks the model (serve/routing.py): an `Authorization` header's, as the connection
opens, or else the first `start`'s `api_key` (browsers cannot set headers on a WebSocket).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError

from mtspeech.serve import protocol as P
from mtspeech.serve.batcher import END, Job, Outgoing
from mtspeech.serve.limits import request_key
from mtspeech.serve.routing import ServedModel
from mtspeech.serve.server import Server

log = logging.getLogger(__name__)
router = APIRouter()
OUTCOMES = {1000: "completed", 1001: "drained"}  # close code → Metrics.stream_connections outcome


class StreamConnection:
    """One `/v1/stream` WebSocket (see module doc). `model`: the model the Authorization header's
    key chose; None without a header, and then the `start` message's `api_key` chooses
    (`key_checked`: until then, whether a client without a key may send anything but `start`)."""

    def __init__(self, ws: WebSocket, server: Server, model: ServedModel | None) -> None:
        self.ws = ws
        self.server = server
        self.settings = server.settings
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.job: Job | None = None
        self.start: P.StartMessage | None = None
        self.model = model
        self.from_header = model is not None
        self.key_checked = model is not None or not server.router.needs_key
        self.close_code = 1000
        self.stopping = False
        self.waiting_since: float | None = None  # loop time the reader began waiting for a message
        self.outcome = "client_gone"  # how it ended (Metrics.stream_connections), set when it does

    # -- outgoing ------------------------------------------------------------------------------

    def error(self, code: P.ErrorCode, message: str) -> None:
        self.outbox.put_nowait(Outgoing(P.ErrorMessage(code=code, message=message), None))

    def terminate(self, code: P.ErrorCode, message: str, close_code: int) -> None:
        """A fatal error: tell the client, end without flushing, close with `close_code`.
        Nothing the client sends afterwards is read, so the close code stays."""
        self.error(code, message)
        self.outbox.put_nowait(END)
        self.close_code = close_code
        self.stopping = True
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
            await self.ws.send_text(msg.model_dump_json(exclude_none=True))  # no speaker fields unless asked
            if isinstance(item, P.ErrorMessage):
                m.errors.labels(item.code.value).inc()
            elif out.since is not None and msg.type in ("partial", "final"):
                hist = m.partial_latency if msg.type == "partial" else m.final_latency
                hist.observe(time.monotonic() - out.since)
        await self.ws.send_text(P.EndMessage().model_dump_json())

    # -- incoming ------------------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer())
        reader = asyncio.create_task(self._reader())
        watchdog = asyncio.create_task(self._idle_watchdog())
        gone = False
        try:
            done, _ = await asyncio.wait({reader, writer, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                gone = reader.result()
                if not gone:
                    await writer
            elif watchdog in done:  # the client went quiet: finish() was called, finals follow
                reader.cancel()
                await writer
            else:  # END was sent after a terminal error, or a send failed ("client gone")
                writer.result()
        except Exception as e:  # a send to a vanished client, or a bug: never crash the server
            gone = True
            log.debug("stream connection ended: %r", e)
        finally:
            for task in (reader, writer, watchdog):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.job is not None and not self.job.done:
                self.server.batcher.remove(self.job)
            self.outcome = "client_gone" if gone else OUTCOMES.get(self.close_code, "terminated")
            if gone:
                self.server.metrics.errors.labels(P.ErrorCode.client_disconnected.value).inc()
            else:
                with contextlib.suppress(Exception):
                    await self.ws.close(self.close_code)

    async def _reader(self) -> bool:
        """Read until stop / a terminal error (False) or the client vanishing (True)."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            # Only time spent waiting for the client counts as idle: a frame waiting for
            # decoding to catch up (backpressure) is not the client's silence.
            self.waiting_since = loop.time()
            msg = await self.ws.receive()
            self.waiting_since = None
            if msg["type"] == "websocket.disconnect":
                return True
            if msg.get("bytes") is not None:
                await self._on_audio(msg["bytes"])
            elif msg.get("text") is not None:
                await self._on_text(msg["text"])
        return False

    async def _idle_watchdog(self) -> None:
        """Return (after finishing the stream) once the client has sent nothing for
        `idle_timeout_s`. One sleeping task per stream, instead of a timer per message: at 160
        streams of 40 ms frames that per-message cost was a tenth of the event loop's time."""
        loop = asyncio.get_running_loop()
        idle = self.settings.idle_timeout_s
        while True:
            since = self.waiting_since
            left = idle if since is None else since + idle - loop.time()
            if left <= 0:
                self.finish(P.ErrorMessage(code=P.ErrorCode.idle_timeout,
                                           message=f"no message for {idle:g} s; closing the stream"))
                return
            await asyncio.sleep(left)

    async def _on_text(self, text: str) -> None:
        if len(text) > self.settings.max_frame_bytes:
            self.terminate(P.ErrorCode.frame_too_large,
                           f"text frame of {len(text)} bytes exceeds the {self.settings.max_frame_bytes}-byte limit",
                           1009)
            return
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            data = None
        if not isinstance(data, dict):
            self.error(P.ErrorCode.bad_json, f"text frames must be JSON objects; got {text[:60]!r}")
            return
        kind = data.get("type")
        if not isinstance(kind, str) or kind not in P.CLIENT_TYPES:
            self.error(P.ErrorCode.unknown_type,
                       f"unknown message type {str(kind)[:40]!r}; expected one of {list(P.CLIENT_TYPES)}")
            return
        try:
            message = P.CLIENT_MESSAGE.validate_python(data)
        except ValidationError as e:
            detail = "; ".join(f"{'.'.join(map(str, err['loc'][1:])) or 'message'}: {err['msg']}"
                               for err in e.errors())
            self.error(P.ErrorCode.bad_message, f"invalid {kind!r} message: {detail[:300]}")
            return
        except RecursionError:
            self.error(P.ErrorCode.bad_message, f"invalid {kind!r} message: nested too deeply")
            return
        if isinstance(message, P.StartMessage):
            await self._on_start(message)
        elif not self.key_checked:
            self._unauthorized()
        else:
            self.finish()

    def _unauthorized(self) -> None:
        self.terminate(P.ErrorCode.unauthorized, "missing or wrong API key (Authorization: Bearer KEY, "
                       'or "api_key" in the start message)', 1008)

    async def _on_start(self, start: P.StartMessage) -> None:
        s = self.settings
        if self.start is not None:
            self.error(P.ErrorCode.already_started, "the stream is already started; send audio or stop")
            return
        if not self.from_header:  # the start's key chooses (until a start is accepted, each one's)
            model = self.server.router.route(start.api_key)
            if model is None:
                return self._unauthorized()
            self.model, self.key_checked = model, True
        recognizer = self.model.recognizer
        if not s.min_sample_rate <= start.sample_rate <= s.max_sample_rate:
            self.error(P.ErrorCode.unsupported_sample_rate,
                       f"sample_rate {start.sample_rate} Hz is not supported; use {s.min_sample_rate}"
                       f"..{s.max_sample_rate} Hz (audio is resampled to "
                       f"{recognizer.geometry.sample_rate} Hz)")
            return
        decoders = recognizer.decoders
        if start.decoder is not None and start.decoder not in decoders:
            self.error(P.ErrorCode.bad_message,
                       f"decoder {start.decoder!r} is not available on this server (it has {sorted(decoders)}; "
                       "'beam' and 'phones' need the server started with --decoder/--lm, 'phones' a phone head)")
            return
        endpoint = None
        if start.endpoint is not None:
            try:  # the protocol bounded each field; EndpointConfig checks what remains
                endpoint = start.endpoint.apply(recognizer.config.endpoint)
            except ValueError as e:
                self.error(P.ErrorCode.bad_message, f"invalid 'start' message: endpoint: {e}")
                return
        if start.hotwords:
            try:  # built on a thread: spelling new words may take seconds, the loop serves every stream
                await asyncio.to_thread(recognizer.bias, start.decoder, start.hotword_pairs())
            except ValueError as e:
                self.error(P.ErrorCode.bad_message, f"invalid 'start' message: {e}")
                return
        speaker_turns, enrolled = start.speaker_turns()
        # the recognizer refuses speaker turns without a speaker head, references of its wrong size,
        # or hotwords for a decoder that cannot be biased (or a head that cannot spell them)
        try:
            stream = recognizer.new_stream(start.sample_rate, endpointing=start.endpointing,
                                           interim=start.interim_results, decoder=start.decoder,
                                           endpoint=endpoint, speech_activity=start.speech_activity,
                                           speaker_turns=speaker_turns, enrolled=enrolled,
                                           hotwords=start.hotword_pairs())
        except ValueError as e:
            self.error(P.ErrorCode.bad_message, f"invalid 'start' message: {e}")
            return
        self.start = start
        self.job = self.server.add_job(self.model, stream, outbox=self.outbox)

    async def _on_audio(self, data: bytes) -> None:
        s = self.settings
        if len(data) > s.max_frame_bytes:
            self.terminate(P.ErrorCode.frame_too_large,
                           f"audio frame of {len(data)} bytes exceeds the {s.max_frame_bytes}-byte limit; "
                           "send smaller frames (e.g. 100 ms)", 1009)
            return
        if not self.key_checked:
            return self._unauthorized()
        if self.job is None:
            self.error(P.ErrorCode.audio_before_start, 'audio before {"type": "start"}; frame dropped')
            return
        try:
            samples = P.decode_frame(data, self.start.encoding)
            await self.server.feed(self.job, samples)
        except ValueError as e:
            self.error(P.ErrorCode.bad_audio, f"{e}; frame dropped")
            return
        self.server.stream_audio_seconds.inc(len(samples) / self.start.sample_rate)
        if self.job.stream.audio_seconds > s.max_stream_seconds:
            self.finish(P.ErrorMessage(code=P.ErrorCode.stream_too_long,
                                       message=f"stream exceeds {s.max_stream_seconds:g} s of audio; finalized"))


@router.websocket("/v1/stream")
async def stream(ws: WebSocket):
    server: Server = ws.app.state.server
    await ws.accept()
    given = request_key(ws)
    model = None if given is None else server.router.route(given)
    if given is not None and model is None:
        return await _refuse(ws, server, P.ErrorCode.unauthorized, "wrong API key", 1008)
    if server.shutting_down:
        return await _refuse(ws, server, P.ErrorCode.shutting_down, "server is shutting down", 1001)
    refused = server.open_slot()
    if refused is not None:
        return await _refuse(ws, server, P.ErrorCode.too_many_streams, refused, 1013)
    conn = StreamConnection(ws, server, model)
    server.connections.add(conn)
    try:
        await conn.run()
    finally:
        server.connections.discard(conn)
        server.close_slot()
        server.metrics.stream_connections.labels(conn.outcome).inc()


async def _refuse(ws: WebSocket, server: Server, code: P.ErrorCode, message: str, close_code: int) -> None:
    """Tell a client why it is not served, then close with `close_code` and the reason."""
    server.metrics.errors.labels(code.value).inc()
    server.metrics.stream_connections.labels("refused").inc()
    with contextlib.suppress(Exception):
        await ws.send_text(P.ErrorMessage(code=code, message=message).model_dump_json())
        await ws.close(close_code, reason=message[:120])
