"""The shared state every route uses: settings, the models by key, stream slots, the batcher,
metrics, API errors.

`ws.py` and `http.py` import this module only; `app.py` composes them. Audio enters a stream
through `Server.feed`, which resamples and checks it on a worker thread (never on the event
loop) and then holds the caller back while more than `max_buffered_seconds` of that stream's
audio waits to be decoded: a client faster than real time is paced by its own socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

import numpy as np

from mtspeech.data.geometry import SAMPLE_RATE
from mtspeech.serve import protocol as P
from mtspeech.serve.batcher import Batcher, Job
from mtspeech.serve.limits import ServerSettings, StreamSlots
from mtspeech.serve.metrics import Metrics
from mtspeech.serve.routing import BASE_ID, KeyRouter, ServedModel
from mtspeech.streaming import StreamingRecognizer

log = logging.getLogger(__name__)


# Frames up to this many samples (one second at the model's rate, no resampling) are accepted
# on the event loop: at 160 streams of 40 ms frames the pool's hand-off per frame cost more
# than the accept itself.
INLINE_ACCEPT_SAMPLES = SAMPLE_RATE

class APIError(Exception):
    """An HTTP error answered as `{"error": {...}}` (OpenAI's shape)."""

    def __init__(self, status: int, code: P.ErrorCode, message: str, param: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


class Server:
    """Shared state of one app: the models (by API key), batcher, limits, metrics, open connections.

    `recognizer`: the base model's; `adapted`: API key → an adapted model (serve/adapted.py).
    Every model's streams share the one batcher and the server's limits."""

    def __init__(self, recognizer: StreamingRecognizer, settings: ServerSettings,
                 adapted: Mapping[str, ServedModel] | None = None) -> None:
        self.recognizer = recognizer
        self.settings = settings
        self.router = KeyRouter(ServedModel(BASE_ID, recognizer), settings.api_key, adapted)
        self.metrics = Metrics()
        self.stream_audio_seconds = self.metrics.audio_seconds.labels("stream")  # looked up once, used per frame
        # per model, looked up once: every model is listed in /metrics from the start
        self.model_audio_seconds = {i: self.metrics.model_audio_seconds.labels(i) for i in self.router.models}
        self.model_streams = {i: self.metrics.model_streams.labels(i) for i in self.router.models}
        self.slots = StreamSlots(settings.max_streams)
        self.batcher = Batcher(recognizer, settings.max_batch_size, settings.max_wait_ms, self.metrics,
                               workers=settings.decode_threads, batch_target=settings.batch_target)
        if len(self.router.models) > 1:
            log.info("serving %d models: %s", len(self.router.models), ", ".join(self.router.models))
        self.connections: set = set()  # open WebSocket connections (ws.StreamConnection)
        self.transcriptions: set[Job] = set()  # HTTP transcriptions in flight
        self.shutting_down = False
        # Resampling, checks and file decoding: off the event loop, and off the decoding thread.
        self.audio_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mtspeech-audio")

    def open_slot(self) -> str | None:
        """Take a stream slot; None, or why the server refuses a new stream now (a message for
        the client: at capacity, or decoding too far behind real time)."""
        if self.shutting_down:
            return "server is shutting down"
        budget = self.settings.max_decode_lag_s
        if budget:
            lag = self.batcher.lag_s()
            self.metrics.decode_lag.set(lag)
            if lag > budget:
                return f"server is {lag:.2f} s behind real time (budget {budget:g} s); retry later"
        if not self.slots.try_acquire():
            return f"server at capacity ({self.settings.max_streams} streams); retry later"
        self.metrics.streams_open.set(self.slots.in_use)
        return None

    def close_slot(self) -> None:
        self.slots.release()
        self.metrics.streams_open.set(self.slots.in_use)

    def add_job(self, model: ServedModel, stream, source: str = "stream", outbox: asyncio.Queue | None = None) -> Job:
        """Hand `model`'s new `stream` to the batcher (counted in the model's metrics)."""
        self.model_streams[model.id].inc()
        return self.batcher.add(stream, source=source, outbox=outbox, model=model)

    async def feed(self, job: Job, samples: np.ndarray) -> None:
        """Accept `samples` (at the stream's rate) into `job`, then wait while its backlog is
        over `max_buffered_seconds`. Raises ValueError for unusable audio (nothing accepted)."""
        recognizer = job.model.recognizer
        if job.stream.resamples or len(samples) > INLINE_ACCEPT_SAMPLES:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.audio_pool, recognizer.accept, job.stream, samples)
        else:  # a checked copy into the stream's queue: cheaper than the two thread hops of the pool
            recognizer.accept(job.stream, samples)
        self.model_audio_seconds[job.model.id].inc(len(samples) / job.stream.sample_rate)
        job.clock.arrived(job.stream.audio_seconds)
        self.batcher.notify(job)
        limit = self.settings.max_buffered_seconds
        while not job.done and not job.finishing and job.stream.buffered_seconds > limit:
            job.progressed.clear()
            await job.progressed.wait()

    async def drain(self) -> None:
        """Graceful shutdown: refuse new streams, finalize open ones, and wait (bounded by
        `shutdown_timeout_s`) for them and for HTTP transcriptions in flight."""
        if self.shutting_down:
            return
        self.shutting_down = True
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        while (self.connections or self.transcriptions) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.connections or self.transcriptions:
            log.warning("%d streams and %d transcriptions still open after %.1f s of shutdown",
                        len(self.connections), len(self.transcriptions), self.settings.shutdown_timeout_s)
            for job in list(self.transcriptions):
                self.batcher.abort(job, P.ErrorMessage(code=P.ErrorCode.shutting_down,
                                                       message="server shut down before the file was decoded"))

    def close(self) -> None:
        self.audio_pool.shutdown(wait=False, cancel_futures=True)

