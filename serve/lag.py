"""How far behind real time a server's decoding runs: the signal admission control reads.

A stream's decode lag, after a step, is how long ago the audio just decoded was *due*: the later
of the moment its last sample arrived and the moment it would have arrived from a real-time
source (the stream's first arrival plus the audio's own duration; `AudioClock`). A client
speaking live has the two equal, so the lag is the time its audio waited to be decoded. A client
that uploads faster than real time over the stream is not counted as lag while the server decodes
it faster than real time, and is once the server cannot. A server keeps up while the lag stays
well under a chunk; when the cores are full every stream's lag grows together.
`LagMeter.lag_s` is the larger of
  - the 95th percentile of the lags of the steps finished in the last `window_s` seconds, and
  - how long the oldest stream now waiting has waited (so a stalled decoder counts at once,
    before any step finishes).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np


class LagMeter:
    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._lags: deque[tuple[float, float]] = deque()  # (finished at, lag seconds)

    def observe(self, lag_s: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._lags.append((now, lag_s))
        self._forget(now)

    def _forget(self, now: float) -> None:
        while self._lags and now - self._lags[0][0] > self.window_s:
            self._lags.popleft()

    def lag_s(self, oldest_waiting_since: float | None = None, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._forget(now)
        recent = float(np.percentile([lag for _, lag in self._lags], 95)) if self._lags else 0.0
        waiting = now - oldest_waiting_since if oldest_waiting_since is not None else 0.0
        return max(recent, waiting)


class AudioClock:
    """When each stretch of one stream's audio arrived, for its lag after each step."""

    def __init__(self) -> None:
        self._start: float | None = None  # when the stream's first audio arrived
        self._arrivals: deque[tuple[float, float]] = deque()  # (seconds accepted so far, arrival time)

    def arrived(self, accepted_s: float, now: float | None = None) -> None:
        """`accepted_s` seconds of the stream's audio have arrived by `now`."""
        now = time.monotonic() if now is None else now
        if self._start is None:  # the first message's own audio is not credited: a live source's
            self._start = now     # lag is undercounted by one frame at most, an upload never runs early
        self._arrivals.append((accepted_s, now))

    def lag_s(self, decoded_s: float, now: float | None = None) -> float | None:
        """How long ago the audio up to `decoded_s` seconds was due (None before any audio)."""
        now = time.monotonic() if now is None else now
        if self._start is None:
            return None
        while len(self._arrivals) > 1 and self._arrivals[1][0] <= decoded_s:
            self._arrivals.popleft()  # stretches decoded already: only the one holding decoded_s matters
        arrived = next((t for s, t in self._arrivals if s >= decoded_s), self._arrivals[-1][1])
        return max(0.0, now - max(arrived, self._start + decoded_s))
