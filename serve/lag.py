"""How far behind real time a server's decoding runs: the signal admission control reads.

A stream's decode lag is the time from its audio becoming decodable (a full chunk buffered:
`Job.ready_since`) to the end of the step that decoded it. A server keeps up while that stays
well under a chunk; when the cores are full, steps come later and the lag of every stream grows
together. `LagMeter.lag_s` is the larger of
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
