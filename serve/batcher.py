"""Cross-stream batching: one consumer drains ready streams into batched decoding steps.

Connections (WebSocket streams, HTTP transcriptions) register a `Job` per stream, feed it
audio with `StreamingRecognizer.accept` on the event loop and call `notify`. One asyncio task
collects the jobs whose stream is `ready`, waits up to `max_wait_ms` for a fuller batch (at
most `max_batch_size`), and runs `recognizer.step` on a single worker thread so the event loop
keeps moving bytes while the network runs. Events come back to each job's `outbox` queue, in
order, followed by `END` once the job was asked to finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from mtspeech.streaming import Event, Stream, StreamingRecognizer
from serve.metrics import Metrics
from serve.protocol import ErrorCode, ErrorMessage

log = logging.getLogger(__name__)

END = object()  # the last item a job's outbox ever holds


@dataclass(frozen=True)
class Outgoing:
    """One item of a job's outbox: a recognizer event or an error, and the time (monotonic
    seconds) of the input it answers, for latency metrics (None: not measured)."""

    item: Event | ErrorMessage
    since: float | None


@dataclass(eq=False)
class Job:
    """A stream decoded by the batcher on behalf of one client.

    `feed`: optional iterator of sample chunks (HTTP files) pulled whenever the stream is
    not ready, so a long file never sits in memory as features all at once.
    `closing_error`: sent after the last final (e.g. idle timeout), before `END`.
    """

    stream: Stream
    source: str = "stream"
    feed: Iterator[np.ndarray] | None = None
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    finishing: bool = False
    finish_since: float | None = None
    ready_since: float | None = None
    closing_error: ErrorMessage | None = None
    done: bool = False


class Batcher:
    """The single decoding consumer of a server (see module doc)."""

    def __init__(self, recognizer: StreamingRecognizer, max_batch_size: int = 16,
                 max_wait_ms: float = 10.0, metrics: Metrics | None = None) -> None:
        self.recognizer = recognizer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics
        self._jobs: set[Job] = set()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # One thread: steps run one after another, and torch uses its own intra-op threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtspeech-decode")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the consumer task on the running loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mtspeech-batcher")

    async def stop(self) -> None:
        """Stop the consumer (jobs still open get `END` after an internal error)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for job in list(self._jobs):
            self._close(job, ErrorMessage(code=ErrorCode.shutting_down, message="server stopped"))
        self._executor.shutdown(wait=True)

    # -- job API (event loop thread) ------------------------------------------------------------

    def add(self, stream: Stream, source: str = "stream", feed: Iterator[np.ndarray] | None = None,
            outbox: asyncio.Queue | None = None) -> Job:
        """Register a stream; its events arrive on `outbox` (a new queue unless given)."""
        job = Job(stream=stream, source=source, feed=feed)
        if outbox is not None:
            job.outbox = outbox
        self._jobs.add(job)
        self.notify(job)
        return job

    def notify(self, job: Job) -> None:
        """Call after `accept`: the stream may have become ready."""
        if job.ready_since is None and self.recognizer.ready(job.stream):
            job.ready_since = time.monotonic()
        if self._wakeup is not None:
            self._wakeup.set()

    def finish(self, job: Job, closing_error: ErrorMessage | None = None) -> None:
        """No more audio: decode the rest, send the last finals (then `closing_error`), then END."""
        if job.finishing or job.done:
            return
        job.finishing = True
        job.finish_since = time.monotonic()
        job.closing_error = closing_error
        self.notify(job)

    def remove(self, job: Job) -> None:
        """Forget a job whose client is gone (a step in flight for it is simply discarded)."""
        self._jobs.discard(job)
        job.done = True

    @property
    def open_jobs(self) -> int:
        return len(self._jobs)

    # -- the consumer -------------------------------------------------------------------------

    def _top_up(self) -> None:
        """Pull file chunks into streams that are not ready; mark exhausted feeds finishing."""
        for job in list(self._jobs):
            if job.feed is None or job.finishing:
                continue
            while not self.recognizer.ready(job.stream):
                chunk = next(job.feed, None)
                if chunk is None:
                    job.feed = None
                    self.finish(job)
                    break
                self.recognizer.accept(job.stream, chunk)
            self.notify(job)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while True:
                self._top_up()
                ready = [j for j in self._jobs if self.recognizer.ready(j.stream)]
                flush = [j for j in self._jobs if j.finishing and j not in ready]
                if not ready and not flush:
                    break
                now = time.monotonic()
                for j in ready:
                    if j.ready_since is None:
                        j.ready_since = now
                if ready and not flush and len(ready) < self.max_batch_size and self.max_wait_s > 0:
                    remaining = min(j.ready_since for j in ready) + self.max_wait_s - now
                    if remaining > 0:  # wait for a fuller batch, then look again
                        try:
                            await asyncio.wait_for(self._wakeup.wait(), remaining)
                        except TimeoutError:
                            pass
                        self._wakeup.clear()
                        continue
                ready.sort(key=lambda j: j.ready_since)  # oldest first: fairness
                batch = ready[: self.max_batch_size]
                await self._decode(loop, batch, flush)

    async def _decode(self, loop, batch: list[Job], flush: list[Job]) -> None:
        since = {id(j): j.ready_since for j in batch}
        for j in batch:
            j.ready_since = None
        streams = [j.stream for j in batch]
        try:
            seconds = await loop.run_in_executor(self._executor, self._work, streams, [j.stream for j in flush])
        except Exception as e:  # a bug or a bad model must not take the server down
            log.exception("decoding step failed for %d streams", len(batch) + len(flush))
            for j in batch + flush:
                self._close(j, ErrorMessage(code=ErrorCode.internal, message=f"decoding failed: {e}"))
            return
        if self.metrics is not None and batch:
            audio_s = len(batch) * self.recognizer.stride_frames * 0.01
            self.metrics.rtf.observe(seconds / audio_s)
            self.metrics.batch_size.observe(len(batch))
        for j in batch:
            if j.done:
                continue
            self._deliver(j, since[id(j)] if j.source == "stream" else None)
            self.notify(j)  # more audio may be buffered already
        for j in flush:
            if j.done:
                continue
            self._deliver(j, j.finish_since if j.source == "stream" else None)
            self._close(j, j.closing_error)

    def _work(self, streams: list[Stream], flush: list[Stream]) -> float:
        """On the worker thread: one batched step, then the finishing streams' flushes."""
        t0 = time.perf_counter()
        if streams:
            self.recognizer.step(streams)
        for s in flush:
            self.recognizer.finish(s)
        return time.perf_counter() - t0

    def _deliver(self, job: Job, since: float | None) -> None:
        for event in self.recognizer.events(job.stream):
            job.outbox.put_nowait(Outgoing(event, since))

    def _close(self, job: Job, error: ErrorMessage | None) -> None:
        if error is not None:
            job.outbox.put_nowait(Outgoing(error, None))
        job.outbox.put_nowait(END)
        self.remove(job)
