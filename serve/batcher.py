"""Cross-stream batching: one consumer drains ready streams into batched decoding steps.

Connections (WebSocket streams, HTTP transcriptions) register a `Job` per stream, feed it
audio (`Server.feed`: `StreamingRecognizer.accept`) and call `notify`. One asyncio task
collects the jobs whose stream is `ready`, waits up to `max_wait_ms` for a batch of
`batch_target` streams (only while some other stream could still join it; a step takes at most
`max_batch_size`), and runs `recognizer.step` on a worker thread so the event loop keeps
moving bytes while the network runs. Up to `workers` steps run at once, each on its own
thread with disjoint streams (a stream is in at most one step): the encoder releases the GIL,
so two single-threaded steps use two cores without the barriers of one two-threaded step.
`workers=0` runs each step on the event loop's own thread instead (inline, one at a time): a
step's many short GIL releases (each torch call) then never wait for a busy event loop to hand
the GIL back, which under load cost more than the overlap gained (docs/deploy.md, "Workers").
Events come back to each job's `outbox` queue, in order, followed by `END` once the job was
asked to finish.

A server may serve several models (its base model and adapted ones: serve/routing.py). Each job
names its `ServedModel`, and a step decodes the streams of one model together: the model of the
stream that has waited longest, so no model's streams starve. One consumer for all of them keeps
the server's limits whole: `workers` bounds the steps of every model together, and the decode lag
that admission reads is the whole server's.

The consumer is supervised: it cannot die. A step that fails is retried stream by stream, so
an error closes only the stream that caused it (with an `internal` error carrying an incident
id; the detail goes to the log), and an unexpected error in the loop itself is logged and the
loop restarts. `alive` tells `/healthz` whether the consumer runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mtspeech.serve.incidents import internal_error
from mtspeech.serve.lag import AudioClock, LagMeter
from mtspeech.serve.metrics import Metrics
from mtspeech.serve.protocol import ErrorCode, ErrorMessage
from mtspeech.serve.routing import BASE_ID, ServedModel
from mtspeech.streaming import Event, Stream, StreamingRecognizer

RESTART_DELAY_S = 0.05  # after an unexpected loop error: don't spin if it repeats

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

    `closing_error`: sent after the last final (e.g. idle timeout), before `END`.
    `progressed`: set after each step of this stream and when it ends (feeders wait on it
    while the stream's backlog is too long).
    """

    stream: Stream
    model: ServedModel  # what decodes it
    source: str = "stream"
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    progressed: asyncio.Event = field(default_factory=asyncio.Event)
    finishing: bool = False
    finish_since: float | None = None
    ready_since: float | None = None
    closing_error: ErrorMessage | None = None
    done: bool = False
    busy: bool = False  # in a step (or flush) now: not eligible for another until it returns
    clock: AudioClock = field(default_factory=AudioClock)  # when its audio arrived (decode lag)


class Batcher:
    """The single decoding consumer of a server (see module doc). `recognizer`: the model a job
    added without naming one is decoded by."""

    def __init__(self, recognizer: StreamingRecognizer, max_batch_size: int = 16,
                 max_wait_ms: float = 10.0, metrics: Metrics | None = None, workers: int = 1,
                 batch_target: int | None = None) -> None:
        if workers < 0:
            raise ValueError(f"workers={workers}: expected >= 0 (0: steps on the event loop's thread)")
        self.recognizer = recognizer
        self.default_model = ServedModel(BASE_ID, recognizer)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.batch_target = min(batch_target or max_batch_size, max_batch_size)
        self.metrics = metrics
        self.workers = workers
        self._jobs: set[Job] = set()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._steps: set[asyncio.Task] = set()  # decoding steps in flight (at most `workers`)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mtspeech-decode") \
            if workers else None
        self.lag = LagMeter()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the consumer task on the running loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="mtspeech-batcher")

    @property
    def alive(self) -> bool:
        """Whether the consumer task runs (False before `start` and after `stop`)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Stop the consumer (jobs still open get `END` after an internal error)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._steps:  # let the steps in flight deliver what they decoded
            await asyncio.wait(self._steps)
        for job in list(self._jobs):
            self._close(job, ErrorMessage(code=ErrorCode.shutting_down, message="server stopped"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # -- job API (event loop thread) ------------------------------------------------------------

    def add(self, stream: Stream, source: str = "stream", outbox: asyncio.Queue | None = None,
            model: ServedModel | None = None) -> Job:
        """Register a stream of `model` (default: the batcher's recognizer; the stream must come from
        the model's `new_stream`); its events arrive on `outbox` (a new queue unless given)."""
        job = Job(stream=stream, model=model or self.default_model, source=source)
        if outbox is not None:
            job.outbox = outbox
        self._jobs.add(job)
        self.notify(job)
        return job

    def notify(self, job: Job) -> None:
        """Call after `accept`: the stream may have become ready."""
        if job.ready_since is None and job.model.recognizer.ready(job.stream):
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
        job.progressed.set()

    def abort(self, job: Job, error: ErrorMessage) -> None:
        """End a job now: `error`, then END, without decoding the rest."""
        if not job.done:
            self._close(job, error)

    @property
    def open_jobs(self) -> int:
        return len(self._jobs)

    def lag_s(self) -> float:
        """Decode lag now (serve/lag.py): the recent steps' p95, or the longest a stream speaking
        in real time has been waiting for its next step, if longer."""
        now = time.monotonic()
        waiting = [j.ready_since for j in self._jobs if j.ready_since is not None and not j.busy
                   and j.source == "stream" and (j.clock.lag_s(j.stream.decoded_seconds, now) or 0.0) > 0.0]
        return self.lag.lag_s(min(waiting) if waiting else None, now)

    # -- the consumer -------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Run the consumer loop forever: an unexpected error is logged and the loop restarts."""
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batcher loop failed; restarting it")
                self._wakeup.set()  # look at the jobs again
                await asyncio.sleep(RESTART_DELAY_S)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while len(self._steps) < max(self.workers, 1):
                idle = [j for j in self._jobs if not j.busy]
                ready = [j for j in idle if j.model.recognizer.ready(j.stream)]
                ready_set = set(ready)
                flush = [j for j in idle if j.finishing and j not in ready_set]
                if not ready and not flush:
                    break
                now = time.monotonic()
                for j in ready:
                    if j.ready_since is None:
                        j.ready_since = now
                # One step decodes one model's streams: the model of the job waiting longest (a
                # flush counts from its finish), so a busy model never starves another.
                oldest = min(ready + flush, key=lambda j: j.ready_since if j in ready_set else j.finish_since)
                ready = [j for j in ready if j.model is oldest.model]
                flush = [j for j in flush if j.model is oldest.model]
                # Wait for a fuller batch only while another stream of this model could join it:
                # one that is idle but not ready yet (a lone stream never waits for company).
                could_join = any(j.model is oldest.model and j not in ready_set and not j.finishing for j in idle)
                if ready and not flush and len(ready) < self.batch_target and could_join and self.max_wait_s > 0:
                    remaining = min(j.ready_since for j in ready) + self.max_wait_s - now
                    if remaining > 0:  # wait for a fuller batch, then look again
                        try:
                            await asyncio.wait_for(self._wakeup.wait(), remaining)
                        except TimeoutError:
                            pass
                        self._wakeup.clear()
                        continue
                ready.sort(key=lambda j: j.ready_since)  # oldest first: fairness
                self._launch(oldest.model, ready[: self.max_batch_size], flush)

    def _launch(self, model: ServedModel, batch: list[Job], flush: list[Job]) -> None:
        """Start one step of `model`'s `batch` (and `flush`) on a worker thread; the loop goes on."""
        for j in batch + flush:
            j.busy = True
        task = asyncio.get_running_loop().create_task(self._step(model, batch, flush))
        self._steps.add(task)

    async def _step(self, model: ServedModel, batch: list[Job], flush: list[Job]) -> None:
        try:
            await self._decode(model.recognizer, batch, flush)
        except Exception:  # _decode handles step errors; anything else must not stall the jobs
            log.exception("delivering a decoding step failed")
        finally:
            for j in batch + flush:
                j.busy = False
            self._steps.discard(asyncio.current_task())
            self._wakeup.set()  # a worker is free, and the jobs may be ready again

    async def _decode(self, recognizer: StreamingRecognizer, batch: list[Job], flush: list[Job]) -> None:
        since = {id(j): j.ready_since for j in batch}
        for j in batch:
            j.ready_since = None
        try:
            seconds = await self._run_work(recognizer, [j.stream for j in batch], [j.stream for j in flush])
        except Exception:
            # One bad stream must not end the others: retry each alone, close only who fails.
            log.warning("a batched step of %d streams failed; retrying them one by one",
                        len(batch) + len(flush))
            for j in batch:
                if await self._alone(j, recognizer, [j.stream], []):
                    self._after_step(j, since[id(j)])
            for j in flush:
                if await self._alone(j, recognizer, [], [j.stream]):
                    self._after_flush(j)
            return
        if self.metrics is not None:
            self.metrics.decode_lag.set(self.lag_s())
        if self.metrics is not None and batch:
            audio_s = len(batch) * recognizer.stride_frames * recognizer.geometry.hop_s
            self.metrics.rtf.observe(seconds / audio_s)
            self.metrics.batch_size.observe(len(batch))
        for j in batch:
            self._after_step(j, since[id(j)])
        for j in flush:
            self._after_flush(j)

    async def _alone(self, job: Job, recognizer: StreamingRecognizer, streams, flush) -> bool:
        """One job's step or flush on its own; on failure the job is closed. True if it ran."""
        try:
            await self._run_work(recognizer, streams, flush)
            return True
        except Exception as e:
            if not job.done:
                self._close(job, ErrorMessage(code=ErrorCode.internal,
                                              message=internal_error(f"decoding stream {job.stream.id}", e)))
            return False

    def _after_step(self, job: Job, since: float | None) -> None:
        if job.source == "stream":  # files decode as fast as they can: no real time to keep
            lag = job.clock.lag_s(job.stream.decoded_seconds)
            if lag is not None:
                self.lag.observe(lag)
        if job.done:
            return
        self._deliver(job, since if job.source == "stream" else None)
        job.progressed.set()
        self.notify(job)  # more audio may be buffered already

    def _after_flush(self, job: Job) -> None:
        if job.done:
            return
        self._deliver(job, job.finish_since if job.source == "stream" else None)
        self._close(job, job.closing_error)

    async def _run_work(self, recognizer: StreamingRecognizer, streams: list[Stream], flush: list[Stream]) -> float:
        """`_work` on a worker thread, or here on the loop's thread when `workers` is 0."""
        if self._executor is None:
            return self._work(recognizer, streams, flush)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._work, recognizer, streams,
                                                                flush)

    def _work(self, recognizer: StreamingRecognizer, streams: list[Stream], flush: list[Stream]) -> float:
        """On the worker thread: one batched step of `recognizer`'s `streams`, then the finishing
        streams' flushes (batched too)."""
        t0 = time.perf_counter()
        if streams:
            recognizer.step(streams)
        if flush:
            recognizer.finish_many(flush)
        return time.perf_counter() - t0

    def _deliver(self, job: Job, since: float | None) -> None:
        for event in job.model.recognizer.events(job.stream):
            job.outbox.put_nowait(Outgoing(event, since))

    def _close(self, job: Job, error: ErrorMessage | None) -> None:
        if error is not None:
            job.outbox.put_nowait(Outgoing(error, None))
        job.outbox.put_nowait(END)
        self.remove(job)
