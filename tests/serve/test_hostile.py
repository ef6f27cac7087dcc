"""Hostile input against the real server: each test reproduces a fault found by probing the
server (poisoned uploads, odd sample rates, decompression bombs, huge samples, deep JSON,
protocol misuse, vanishing clients, fast clients) and checks that it harms nobody else."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time

import httpx
import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient
from websockets.asyncio.client import connect

from mtspeech.client import to_pcm16
from mtspeech.serve.app import create_app
from serve_helpers import live_server, next_message, recv_all, reference_text, rss_bytes, signal, steady_settings


def _float_wav(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples.astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


async def _stream(url: str, samples: np.ndarray, start: dict | None = None, frame: int = 1600,
                  encode=to_pcm16) -> list[dict]:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", **(start or {})}))
        for i in range(0, len(samples), frame):
            await ws.send(encode(samples[i : i + frame]))
        await ws.send(json.dumps({"type": "stop"}))
        return await recv_all(ws, timeout_s=60)


def _finals(msgs: list[dict]) -> str:
    return " ".join(m["text"] for m in msgs if m["type"] == "final")


def _healthz(addr: str) -> dict:
    return httpx.get(f"http://{addr}/healthz", timeout=5).json()


def test_poisoned_upload_next_to_a_live_stream(make_server, recognizer):
    """A float WAV at 44.1 kHz with samples of 3e38 (finite, but inf once resampled) once
    killed the decoding consumer: every stream hung and /healthz still said ok."""
    addr, app = make_server()
    wav = signal(3.0, seed=4)
    poison = _float_wav(np.full(44100, 3e38, dtype=np.float32), 44100)

    async def run():
        live = asyncio.create_task(_stream(f"ws://{addr}/v1/stream", wav, {"endpointing": False}))
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"http://{addr}/v1/transcribe", content=poison)
        return r, await live

    r, msgs = asyncio.run(run())
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_audio", r.text
    assert msgs[-1]["type"] == "end" and not [m for m in msgs if m["type"] == "error"]
    assert _finals(msgs) == reference_text(recognizer, wav) != ""
    assert app.state.server.batcher.alive and _healthz(addr)["status"] == "ok"
    # and the server still serves files afterwards
    good = httpx.post(f"http://{addr}/v1/transcribe", content=_float_wav(wav, 16000), timeout=30)
    assert good.status_code == 200 and good.json()["text"] == reference_text(recognizer, wav, endpointing=True)


def test_healthz_reports_a_dead_consumer(recognizer):
    app = create_app(recognizer)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        app.state.server.batcher._task.cancel()  # what any escaped error used to do
        time.sleep(0.1)
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "unhealthy"


def test_healthz_fails_readiness_while_draining(recognizer):
    app = create_app(recognizer)
    with TestClient(app) as c:
        app.state.server.shutting_down = True  # what SIGTERM's drain sets first
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "shutting_down"
        app.state.server.shutting_down = False


def test_a_failing_step_closes_only_its_stream_with_an_incident_id(make_server, recognizer, caplog):
    """Internal errors reach the client as a code and an incident id, never the exception text;
    the other streams of the same batch go on."""
    addr, app = make_server(max_wait_ms=50.0)
    rec = app.state.server.recognizer
    real_step = rec.step
    secret = "/secret/path/model.pt shape (3, 7)"

    def step(streams):
        if any(s.sample_rate == 22050 for s in streams):
            raise RuntimeError(secret)
        return real_step(streams)

    rec.step = step
    wav = signal(2.0, seed=5)
    wav22 = signal(2.0, seed=5, rate=22050)
    try:
        async def run():
            url = f"ws://{addr}/v1/stream"
            return await asyncio.gather(_stream(url, wav22, {"sample_rate": 22050, "endpointing": False}),
                                        _stream(url, wav, {"endpointing": False}))

        with caplog.at_level(logging.ERROR):
            bad, good = asyncio.run(run())
    finally:
        rec.step = real_step
    errors = [m for m in bad if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["internal"] and "incident" in errors[0]["message"]
    assert secret not in json.dumps(bad)
    assert secret in caplog.text  # the detail is in the log
    assert _finals(good) == reference_text(recognizer, wav) and good[-1]["type"] == "end"
    assert app.state.server.batcher.alive


@pytest.mark.parametrize("rate", [8001, 22050, 44100, 95999])
def test_sample_rates_that_share_no_factor_with_16k(make_server, recognizer, rate):
    """One resample call once cost 7 s and 2 GB at 8001 Hz (the sinc kernel grows with the
    reduced ratio), on the event loop; at 95999 Hz the allocation failed (close 1006)."""
    addr, _ = make_server()
    wav = signal(2.0, seed=6, rate=rate)
    before = rss_bytes()
    msgs = asyncio.run(_stream(f"ws://{addr}/v1/stream", wav, {"sample_rate": rate, "endpointing": False},
                               frame=rate // 10))
    assert msgs[-1]["type"] == "end" and not [m for m in msgs if m["type"] == "error"]
    offline = recognizer.transcribe(wav, sample_rate=rate, endpointing=False)
    assert _finals(msgs) == " ".join(f.text for f in offline)
    assert rss_bytes() - before < 300 * 2**20


def test_decompression_bomb_is_refused_from_its_header(recognizer, monkeypatch):
    """A small FLAC holding long silence is refused before a single sample is decoded."""
    seconds, rate = 600, 16000
    buf = io.BytesIO()
    with soundfile.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros(rate * 60, dtype=np.int16)
        for _ in range(seconds // 60):
            f.write(block)
    bomb = buf.getvalue()
    assert len(bomb) < 300_000  # ten minutes of silence compress to almost nothing
    decoded = []
    real_read = soundfile.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        out = real_read(self, frames, *args, **kwargs)
        decoded.append(len(out))
        return out

    monkeypatch.setattr(soundfile.SoundFile, "read", counting_read)
    app = create_app(recognizer, steady_settings(max_file_seconds=60.0))
    with TestClient(app) as c:
        r = c.post("/v1/transcribe", content=bomb)
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
    assert "600.0 s" in r.json()["error"]["message"]
    assert sum(decoded) == 0, f"{sum(decoded)} samples decoded before the duration check"


def test_huge_finite_f32_samples_are_refused_and_the_stream_goes_on(make_server, recognizer):
    """Samples of 1e30 once silenced a stream for the rest of its life, with no error."""
    addr, _ = make_server()
    wav = signal(2.0, seed=7)
    f32 = lambda x: x.astype("<f4").tobytes()  # noqa: E731

    async def run():
        async with connect(f"ws://{addr}/v1/stream") as ws:
            await ws.send(json.dumps({"type": "start", "encoding": "f32le", "endpointing": False}))
            await ws.send(f32(np.full(1600, 1e30, dtype=np.float32)))
            for i in range(0, len(wav), 1600):
                await ws.send(f32(wav[i : i + 1600]))
            await ws.send(json.dumps({"type": "stop"}))
            return await recv_all(ws)

    msgs = asyncio.run(run())
    errors = [m for m in msgs if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["bad_audio"] and "1e+30" in errors[0]["message"]
    assert _finals(msgs) == reference_text(recognizer, wav) != ""


def test_deep_json_and_terminal_close_codes(make_server):
    addr, _ = make_server(max_frame_bytes=4096)

    async def run():
        async with connect(f"ws://{addr}/v1/stream") as ws:
            await ws.send("[" * 2000 + "]" * 2000)  # once an uncaught RecursionError (close 1006)
            assert (await next_message(ws))["code"] == "bad_json"
            await ws.send('{"type": "start", "sample_rate": ' + "[" * 1500 + "]" * 1500 + "}")
            assert (await next_message(ws))["code"] in ("bad_json", "bad_message")
            await ws.send(json.dumps({"type": "start"}))  # the connection is still usable
            await ws.send(b"\x00" * 8192)  # frame_too_large is terminal: close 1009 ...
            await ws.send(json.dumps({"type": "stop"}))  # ... and a stop after it must not turn it into 1000
            msgs = await recv_all(ws)
            await ws.wait_closed()
            return msgs, ws.close_code

    msgs, close_code = asyncio.run(run())
    assert [m["code"] for m in msgs if m["type"] == "error"] == ["frame_too_large"]
    assert close_code == 1009


def test_http_refusal_at_capacity_is_counted_once(recognizer):
    app = create_app(recognizer, steady_settings(max_streams=1))
    server = app.state.server
    with TestClient(app) as c:
        server.slots.try_acquire()  # someone holds the only slot
        r = c.post("/v1/transcribe", content=_float_wav(signal(0.5), 16000))
        assert r.status_code == 503
        counts = {s.labels["code"]: s.value for s in server.metrics.errors.collect()[0].samples
                  if s.name.endswith("_total")}
        assert counts.get("too_many_streams") == 1.0
        server.slots.release()


def _raw_post(addr: str, body: bytes, declared: int) -> socket.socket:
    host, port = addr.split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"POST /v1/transcribe HTTP/1.1\r\nHost: {addr}\r\nContent-Type: audio/wav\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    sock.sendall(head + body)
    return sock


def test_client_vanishing_mid_upload_logs_no_traceback(make_server):
    addr, _ = make_server()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "mtspeech.serve", "")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        sock = _raw_post(addr, b"RIFF" + b"\x00" * 1000, declared=100_000)
        time.sleep(0.3)
        sock.close()
        time.sleep(0.5)
        assert _healthz(addr)["status"] == "ok"
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_http_client_that_disconnects_frees_its_slot_at_once(make_server):
    """A 240 s file once kept its slot for 13 s after its client was gone."""
    addr, app = make_server(max_buffered_seconds=1.0)
    server = app.state.server
    data = _float_wav(signal(240.0, seed=8), 16000)
    sock = _raw_post(addr, data, declared=len(data))
    deadline = time.monotonic() + 10
    while not server.transcriptions and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.slots.in_use == 1
    sock.close()
    deadline = time.monotonic() + 2.0
    while server.slots.in_use and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.slots.in_use == 0 and not server.transcriptions and server.batcher.open_jobs == 0


@pytest.mark.slow
def test_unpaced_twenty_minute_stream_is_paced_and_rss_bounded():
    """A client sending 20 minutes of audio as fast as it can: the server stops reading while
    more than max_buffered_seconds wait, so its memory stays bounded (measured as RSS).
    (640 ms chunks: a quarter of the steps of the shared tiny recognizer, same behaviour.)"""
    from mtspeech.streaming import StreamingConfig, StreamingRecognizer
    from tiny_asr import PieceTable, tiny_model

    rec = StreamingRecognizer(tiny_model(), PieceTable(), StreamingConfig(chunk_frames=16, left_chunks=2))
    app = create_app(rec, steady_settings(max_buffered_seconds=2.0, max_stream_seconds=7200))
    with live_server(app) as (addr, _):
        _unpaced_twenty_minutes(addr, app)


def _unpaced_twenty_minutes(addr, app):
    minute = to_pcm16(signal(60.0, seed=10))
    frame = 32000  # 1 s of pcm_s16le
    peak = [rss_bytes()]
    backlog = [0.0]

    async def watch(stop):
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            for conn in app.state.server.connections:
                if conn.job is not None:
                    backlog[0] = max(backlog[0], conn.job.stream.buffered_seconds)
            await asyncio.sleep(0.05)

    async def run():
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch(stop))
        # (the client's own pings would wait behind its queued audio: a fast sender disables them)
        async with connect(f"ws://{addr}/v1/stream", max_size=None, ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "start", "endpointing": True, "interim_results": False}))
            for _ in range(20):
                for i in range(0, len(minute), frame):
                    await ws.send(minute[i : i + frame])
            await ws.send(json.dumps({"type": "stop"}))
            msgs = await recv_all(ws, timeout_s=120)
        stop.set()
        await watcher
        return msgs

    before = rss_bytes()
    msgs = asyncio.run(run())
    assert msgs[-1]["type"] == "end" and not [m for m in msgs if m["type"] == "error"]
    # 20 min of float32 samples alone would be 77 MB; features of it another 38 MB.
    assert peak[0] - before < 60 * 2**20, f"RSS grew by {(peak[0] - before) / 2**20:.0f} MiB"
    # backlog bound + one frame that arrived while it was full + one encoder window (0.65 s)
    assert backlog[0] <= 2.0 + frame / 32000 + 0.7
