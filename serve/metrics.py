"""Prometheus metrics of one server instance (its own registry, so apps in tests never clash).

Under `mtspeech serve --workers N` (serve/workers.py) every worker process writes its values to
the supervisor's `PROMETHEUS_MULTIPROC_DIR`, and `/metrics` of any worker renders all of them
summed (prometheus_client's multiprocess mode), so a scrape counts every stream of the server.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0)
RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    """The server's counters, gauges and histograms.

    - `streams_open`: WebSocket streams and HTTP transcriptions in progress;
    - `audio_seconds`: audio decoded, by `source` (`stream` / `file`);
    - `rtf`: compute seconds / audio seconds of each batched decoding step;
    - `batch_size`: streams per step;
    - `partial_latency` / `final_latency`: from the arrival of the audio that completed a
      chunk (or of `stop`) to the message being sent;
    - `errors`: by error `code`;
    - `stream_connections`: `/v1/stream` connections, counted once each when they end, by
      `outcome`: `completed` (closed 1000: the client's stop, or an idle / length limit),
      `drained` (finalized by a shutdown, 1001), `refused` (full, draining, or a wrong key in
      the header: never started), `terminated` (a fatal protocol error), `client_gone` (vanished). Their sum is
      every connection the replica took, which a load-balancer test checks against its clients;
    - `model_streams` / `model_audio_seconds`: streams started (WebSocket and files) and audio
      received, by `model`: the short id of the model decoding them (`base`, or `adapted-` and
      the start of its file's SHA-256: serve/routing.py), never the API key that chose it.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # livesum: the open streams of the worker processes still running, added up
        self.streams_open = Gauge("mtspeech_streams_open", "open streams (WebSocket + HTTP)", registry=r,
                                  multiprocess_mode="livesum")
        self.audio_seconds = Counter(
            "mtspeech_audio_seconds", "audio seconds decoded", ["source"], registry=r
        )
        self.rtf = Histogram(
            "mtspeech_real_time_factor", "compute time / audio time of a decoding step",
            buckets=RTF_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "mtspeech_batch_size", "streams per decoding step",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.partial_latency = Histogram(
            "mtspeech_partial_latency_seconds", "audio arrival to partial sent",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.final_latency = Histogram(
            "mtspeech_final_latency_seconds", "audio arrival (or stop) to final sent",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.errors = Counter("mtspeech_errors", "errors reported to clients", ["code"], registry=r)
        # max over workers: admission reads each worker's own
        self.decode_lag = Gauge("mtspeech_decode_lag_seconds", "decode lag (serve/lag.py) after the last "
                                "decoding step or stream request", registry=r, multiprocess_mode="livemax")
        self.stream_connections = Counter("mtspeech_stream_connections", "/v1/stream connections, by outcome",
                                          ["outcome"], registry=r)
        self.model_streams = Counter("mtspeech_model_streams", "streams and file transcriptions started, by the "
                                     "model decoding them", ["model"], registry=r)
        self.model_audio_seconds = Counter("mtspeech_model_audio_seconds", "audio seconds received, by the model "
                                           "decoding them", ["model"], registry=r)

    @staticmethod
    def shared() -> bool:
        """Whether the values are shared with sibling worker processes (serve/workers.py)."""
        return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (of every worker, when shared)."""
        if not self.shared():
            return generate_latest(self.registry)
        return generate_latest(_all_workers())

    def open_streams_total(self, own: int) -> int:
        """Open streams of the whole server: `own` (this process's), or every worker's when shared."""
        if not self.shared():
            return own
        return int(sum(s.value for m in _all_workers().collect() if m.name == "mtspeech_streams_open"
                       for s in m.samples))


def _all_workers() -> CollectorRegistry:
    """Every worker process's values, read from PROMETHEUS_MULTIPROC_DIR."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
