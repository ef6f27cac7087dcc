"""Server settings and the limits they impose: stream slots, sizes, durations, API key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from starlette.requests import HTTPConnection

# `mtspeech serve`'s default --max-streams per core: what benchmarks/server_load.py measured the
# default server (2 workers, phones + the embedded LM, the demo model) keep up with on 2 cores,
# continuous speech, every repeat (docs/results/server-load/default-continuous-2cores.json: 240;
# a rerun, default-continuous-rerun-2cores.json, kept up with 240 and fell behind at 256 in one of
# three repeats), halved. A test keeps the two equal. Other models and machines: measure and pass --max-streams;
# admission by measured lag (max_decode_lag_s) refuses streams before this cap when decoding falls behind.
STREAMS_PER_CORE = 120


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server is configured with (the `mtspeech serve` flags).

    `max_streams` bounds open WebSocket streams and in-flight HTTP transcriptions together;
    past it, WebSockets are closed with code 1013 and HTTP answers 503.
    """

    max_streams: int = 64
    max_batch_size: int = 64
    # A step waits up to max_wait_ms for a batch of batch_target streams (fuller batches cost less
    # per stream; a staggered load fills them slowly), and only while another stream could join.
    max_wait_ms: float = 10.0
    batch_target: int = 64
    decode_threads: int = 1  # decoding steps run at once (disjoint streams, one thread each); 0: inline
    max_frame_bytes: int = 256 * 1024  # one WebSocket binary frame
    max_upload_bytes: int = 50 * 1024 * 1024
    max_stream_seconds: float = 3600.0  # audio per WebSocket stream
    max_file_seconds: float = 3600.0
    idle_timeout_s: float = 30.0  # no message from the client for this long ends the stream
    min_sample_rate: int = 8000
    max_sample_rate: int = 96000
    api_key: str | None = None
    shutdown_timeout_s: float = 10.0  # SIGTERM: grace for open streams and HTTP transcriptions
    # A stream whose audio waiting to be decoded exceeds this is not read until it drains
    # (WebSocket: the socket is not read, so TCP paces the client; files: decoding pauses).
    max_buffered_seconds: float = 4.0
    # Admission by measured decode lag (serve/lag.py): past this many seconds behind, new streams
    # are refused (1013 / 503 + Retry-After) so the open ones stay within their latency; 0: off.
    # Below the 0.5 s final-latency bound of benchmarks/server_load.py, with room for the step
    # that is running when the lag is read.
    max_decode_lag_s: float = 0.3

    def __post_init__(self) -> None:
        if self.decode_threads < 0:
            raise ValueError(f"decode_threads={self.decode_threads}: expected >= 0 (0: on the event loop's thread)")
        for name in ("max_streams", "max_batch_size", "batch_target", "max_frame_bytes", "max_upload_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        for name in ("max_stream_seconds", "max_file_seconds", "idle_timeout_s", "max_buffered_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected a positive number of seconds")
        if self.shutdown_timeout_s < 0:
            raise ValueError(f"shutdown_timeout_s={self.shutdown_timeout_s}: expected >= 0")
        if self.max_decode_lag_s < 0:
            raise ValueError(f"max_decode_lag_s={self.max_decode_lag_s}: expected >= 0 (0: off)")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={self.max_wait_ms}: expected >= 0")


def request_key(conn: HTTPConnection) -> str | None:
    """The key of an `Authorization: Bearer KEY` header, or None. The key is never read from
    the query string: uvicorn's access log would record it."""
    header = conn.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def key_matches(given: str | None, api_key: str | None) -> bool:
    """True when no key is configured, or `given` is it (constant-time comparison)."""
    if api_key is None:
        return True
    return given is not None and secrets.compare_digest(given.encode(), api_key.encode())


class StreamSlots:
    """A non-blocking counter of open streams: `try_acquire` fails instead of queueing.

    Used only from the event loop thread, so plain integers suffice.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.capacity:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use = max(0, self.in_use - 1)
