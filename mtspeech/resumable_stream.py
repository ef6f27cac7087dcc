"""A `/v1/stream` session that survives its replica going away: reconnect, resend, go on.

Behind a load balancer (deploy/, docs/deploy.md) a replica that drains on SIGTERM finalizes
its streams (their last `final`, then `shutting_down`, `end`, close code 1001), and a full
one refuses new streams (`too_many_streams`, close code 1013). `stream_audio` then opens a
new connection, which the balancer sends to a replica that takes it, and continues there
as a NEW stream:

- **What is resent:** every audio sample after the end of the last `final` received (the
  server's acknowledgement that the audio up to there is transcribed), and nothing before
  it. A replica drains by finalizing everything it has read, so an utterance cut by the
  drain has a final on the old replica; the audio after that final's last word (silence,
  or the tail of that word) is sent again, together with anything still in flight that
  the old replica never read. Resent audio goes out at once; live audio keeps its pace.
- **Times:** the new stream's times start at 0; finals (and `activity`) are shifted back to
  the whole stream's time line before they are passed on or kept, so they read as one stream.
- **When it retries:** close codes 1001 (going away), 1013 (try again later) and 1006 (the
  connection was lost with no close frame: the replica's process or machine died); a
  handshake answered 502/503/504 (a balancer whose replicas are restarting); and a refused
  connection, but only once a first connection has been made (no server at all fails at once).
- **Backoff:** `RetryPolicy` — exponential from `base_delay_s`, capped at `max_delay_s`, with
  "equal jitter" (a uniform draw in the upper half of each step) so that the clients of a
  drained replica do not all come back in the same instant. At most `max_retries` attempts
  in a row without progress (a session that got a final resets the count); then
  `ReconnectError` says how many attempts failed and why the last one did.

Audio is kept as the 16-bit PCM that was sent, from the last final on; a stream without
finals (`endpointing` off) keeps all of it, 32 KB per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import numpy as np

from mtspeech.data.geometry import SAMPLE_RATE

log = logging.getLogger(__name__)

RETRY_CLOSE_CODES = {1001: "going away: the server is draining",
                     1013: "try again later: the server is at capacity",
                     1006: "connection lost without a close frame"}
RETRY_HTTP_STATUS = (502, 503, 504)
END_CLOSE_WAIT_S = 5.0  # after `end` the server closes at once; wait this long for its close code


class ReconnectError(ConnectionError):
    """Reconnection gave up: `max_retries` attempts in a row failed without progress."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded reconnection with exponential backoff and jitter (see module doc)."""

    max_retries: int = 5
    base_delay_s: float = 0.25
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries={self.max_retries}: expected >= 0")
        if not 0 < self.base_delay_s <= self.max_delay_s:
            raise ValueError(f"base_delay_s={self.base_delay_s}, max_delay_s={self.max_delay_s}: "
                             "expected 0 < base_delay_s <= max_delay_s")

    def delay_s(self, failures: int, rng: random.Random) -> float:
        """Wait before attempt `failures + 1` after `failures` failed ones (>= 1 on the first
        retry): in [step / 2, step], step = min(max_delay_s, base_delay_s * 2 ** (failures - 1))."""
        step = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, failures - 1))
        return step / 2 + rng.random() * step / 2


@dataclass
class Reconnect:
    """One session that ended in a retry: why, and where the next one resumed."""

    close_code: int | None  # None: the connection could not be opened (see `reason`)
    reason: str
    resumed_at_s: float  # the whole stream's time the next session starts from
    delay_s: float
    finals: int  # finals this session delivered (drained sessions deliver their last ones)


@dataclass
class StreamResult:
    """Every message of a stream, across its sessions (times on the whole stream's line)."""

    name: str = ""
    finals: list[dict] = field(default_factory=list)
    partials: int = 0
    errors: list[dict] = field(default_factory=list)  # errors of sessions that were not retried
    reconnects: list[Reconnect] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(f["text"] for f in self.finals if f["text"])


def to_pcm16(samples: np.ndarray) -> bytes:
    """float samples in [-1, 1] → little-endian 16-bit PCM bytes (clipped)."""
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


def _shift(msg: dict, offset_s: float) -> dict:
    """`msg` with its stream times moved `offset_s` later (a resumed session starts at 0)."""
    if not offset_s or msg["type"] not in ("final", "activity"):
        return msg
    msg = dict(msg, start=msg["start"] + offset_s)
    if msg["type"] == "final":
        msg["end"] += offset_s
        msg["words"] = [dict(w, start=w["start"] + offset_s, end=w["end"] + offset_s) for w in msg["words"]]
    return msg


class _Unacknowledged:
    """The PCM sent since the last final, as (first sample index, bytes) frames."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.next_sample = 0  # index of the next sample the source gives

    def add(self, pcm: bytes) -> None:
        self.frames.append((self.next_sample, pcm))
        self.next_sample += len(pcm) // 2

    def acknowledge(self, upto_sample: int) -> None:
        """Drop audio before `upto_sample` (cutting the frame that straddles it)."""
        kept = []
        for start, pcm in self.frames:
            end = start + len(pcm) // 2
            if end <= upto_sample:
                continue
            if start < upto_sample:
                pcm, start = pcm[2 * (upto_sample - start):], upto_sample
            kept.append((start, pcm))
        self.frames = kept

    @property
    def first_sample(self) -> int:
        return self.frames[0][0] if self.frames else self.next_sample


async def stream_audio(url: str, source: AsyncIterator[np.ndarray], api_key: str | None = None,
                       interim: bool = True, endpointing: bool = True,
                       on_message: Callable[[dict], None] | None = None, name: str = "",
                       retry: RetryPolicy | None = RetryPolicy(), seed: int | None = None,
                       hotwords: list[dict] | None = None) -> StreamResult:
    """Stream 16 kHz float frames from `source` to `url` (ws://host:port/v1/stream), then
    `stop`; reconnect and resume as the module doc says (`retry=None`: never; the stream then
ends with the server's error, or `connection_closed`, in `errors`). `on_message`
    sees every message, times shifted; `seed` fixes the jitter (tests); `hotwords`: the
    `start` message's list of `{"phrase", "boost"}` (sent again on a resumed stream)."""
    start = {"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le",
             "interim_results": interim, "endpointing": endpointing}
    if hotwords:
        start["hotwords"] = hotwords
    start = json.dumps(start)
    stream = _ResumableStream(url, start, api_key, on_message, name, retry, random.Random(seed))
    return await stream.run(source)


@dataclass
class _Session:
    """What one connection ended with."""

    finals: int = 0
    errors: list[dict] = field(default_factory=list)
    close_code: int | None = None  # None: no connection was made (see `reason`)
    reason: str = ""


def _close_code(ws) -> int:
    """The code of the server's close frame once received (before the TCP connection is down:
    that may take a peer's close timeout); 1006 if the connection ended without one; 1000 if
    it is still open (`end` came, the close did not within END_CLOSE_WAIT_S: a normal end)."""
    if ws.protocol.close_rcvd is not None:
        return ws.protocol.close_rcvd.code
    return 1000 if ws.close_code is None else ws.close_code


class _ResumableStream:
    """The state `stream_audio` keeps across connections (see the module doc)."""

    def __init__(self, url, start, api_key, on_message, name, retry, rng) -> None:
        self.url, self.start, self.on_message, self.retry, self.rng = url, start, on_message, retry, rng
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.result, self.pending = StreamResult(name), _Unacknowledged()
        # The source is read by one task for the whole stream: a session that dies must not
        # cancel a read in the middle of the source (that would close an async generator).
        self.frames: asyncio.Queue = asyncio.Queue(maxsize=8)
        self.source_done, self.source_error, self.opened = False, None, False

    async def run(self, source: AsyncIterator[np.ndarray]) -> StreamResult:
        pumping = asyncio.create_task(self._pump(source))
        failures = 0
        try:
            while True:
                session = await self._session()
                if self.source_error is not None:
                    raise self.source_error
                if session.close_code is not None and session.close_code not in RETRY_CLOSE_CODES:
                    self.result.errors += session.errors  # ended: normally, or for a reason retrying won't fix
                    return self.result
                if self.source_done and not self.pending.frames:  # all acknowledged: nothing to resume
                    return self.result
                if self.retry is None:  # not asked to go on: the stream ends here, saying why
                    self.result.errors += session.errors or [
                        {"type": "error", "code": "connection_closed", "message": session.reason}]
                    return self.result
                failures = 0 if session.finals else failures + 1
                await self._back_off(session, failures)
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping

    async def _pump(self, source: AsyncIterator[np.ndarray]) -> None:
        try:
            async for samples in source:
                await self.frames.put(to_pcm16(samples))
        except Exception as e:  # handed to the sender, which ends the stream with it
            await self.frames.put(e)
        else:
            await self.frames.put(None)

    async def _back_off(self, session: _Session, failures: int) -> None:
        """Sleep before the next attempt, or raise ReconnectError when the retries are spent."""
        name = self.result.name or self.url
        if failures > self.retry.max_retries:
            raise ReconnectError(f"{name}: the stream could not go on after {self.retry.max_retries} retries "
                                 f"without progress; last: {session.reason}")
        delay = self.retry.delay_s(max(1, failures), self.rng)
        resume_s = self.pending.first_sample / SAMPLE_RATE
        self.result.reconnects.append(Reconnect(session.close_code, session.reason, resume_s, delay, session.finals))
        log.warning("%s: %s; reconnecting in %.2f s, resending from %.2f s", name, session.reason, delay, resume_s)
        await asyncio.sleep(delay)

    async def _session(self) -> _Session:
        """One connection: resend what is unacknowledged, go on with the source, read replies."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        session = _Session()
        try:
            async with connect(self.url, additional_headers=self.headers, max_size=2**22, open_timeout=10) as ws:
                self.opened = True
                await self._exchange(ws, session)
                session.close_code = _close_code(ws)
        except InvalidStatus as e:
            if e.response.status_code not in RETRY_HTTP_STATUS:
                raise
            session.reason = f"handshake answered HTTP {e.response.status_code}"
            return session
        except OSError as e:  # refused, unreachable, timed out
            if not self.opened:  # no server at all: say so at once
                raise
            session.reason = f"cannot connect: {e}"
            return session
        if session.close_code in RETRY_CLOSE_CODES:
            session.reason = f"close code {session.close_code} ({RETRY_CLOSE_CODES[session.close_code]})"
            if session.errors:
                session.reason += "; " + "; ".join(f"{m['code']}: {m['message']}" for m in session.errors)
        return session

    async def _exchange(self, ws, session: _Session) -> None:
        from websockets.exceptions import ConnectionClosed

        offset_s = self.pending.first_sample / SAMPLE_RATE  # this session's 0 on the stream's time line
        sender = asyncio.create_task(self._send(ws))
        try:
            async for raw in ws:
                msg = _shift(json.loads(raw), offset_s)
                if self.on_message is not None:
                    self.on_message(msg)
                if msg["type"] == "final":
                    self.result.finals.append(msg)
                    session.finals += 1
                    self.pending.acknowledge(round(msg["end"] * SAMPLE_RATE))
                elif msg["type"] == "partial":
                    self.result.partials += 1
                elif msg["type"] == "error":
                    session.errors.append(msg)
                elif msg["type"] == "end":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ws.wait_closed(), END_CLOSE_WAIT_S)
                    break
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender

    async def _send(self, ws) -> None:
        await ws.send(self.start)
        for _, pcm in list(self.pending.frames):  # unacknowledged: at once
            await ws.send(pcm)
        while not self.source_done:
            pcm = await self.frames.get()
            if isinstance(pcm, Exception):  # the source failed: end the stream with its error
                self.source_error = pcm
                await ws.close()
                return
            if pcm is None:
                self.source_done = True
                break
            self.pending.add(pcm)  # kept before it is sent: a frame lost on the way is resent
            await ws.send(pcm)
        await ws.send(json.dumps({"type": "stop"}))
