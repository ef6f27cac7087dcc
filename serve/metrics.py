"""Prometheus metrics of one server instance (its own registry, so apps in tests never clash)."""

from __future__ import annotations

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
    - `errors`: by error `code`.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.streams_open = Gauge("mtspeech_streams_open", "open streams (WebSocket + HTTP)", registry=r)
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

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
