"""Admission by measured decode lag: the lag meter's arithmetic, and a server whose decoding
falls behind refusing new streams (1013 / 503 + Retry-After) while its open stream finishes."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from websockets.asyncio.client import connect

from mtspeech.client import to_pcm16
from mtspeech.serve.lag import AudioClock, LagMeter
from serve_helpers import recv_all, signal, wav_bytes


def test_lag_meter_p95_of_the_window_and_the_oldest_wait():
    m = LagMeter(window_s=2.0)
    assert m.lag_s(now=0.0) == 0.0
    for k in range(20):  # 19 lags of 0.1 s and one of 1.0 s within the window
        m.observe(1.0 if k == 7 else 0.1, now=k * 0.05)
    assert 0.1 < m.lag_s(now=1.0) < 1.0  # the p95 sits between the bulk and the outlier
    assert m.lag_s(now=3.5) == 0.0  # every step is older than the window: forgotten
    # a stream waiting for 0.8 s counts at once, before any step finishes
    assert m.lag_s(oldest_waiting_since=2.7, now=3.5) == pytest.approx(0.8)


def test_audio_clock_counts_real_time_not_uploads_ahead_of_it():
    live = AudioClock()  # 0.1 s frames arriving at real time from t=0.1
    for k in range(1, 11):
        live.arrived(0.1 * k, now=0.1 * k)
    # decoded at 0.9 s: 0.4 s after its last sample came, 0.3 s after it was due counting from the
    # first arrival (the first frame's own 0.1 s is not credited)
    assert live.lag_s(0.5, now=0.9) == pytest.approx(0.3)
    burst = AudioClock()  # 10 s arriving at once at t=0: due at real-time pace, not at arrival
    burst.arrived(10.0, now=0.0)
    assert burst.lag_s(3.2, now=1.0) == 0.0  # 3.2 s decoded within 1 s: ahead of real time
    assert burst.lag_s(3.2, now=4.0) == pytest.approx(0.8)  # due at 3.2 s, decoded at 4.0 s
    assert burst.lag_s(3.2, now=2.0) == 0.0
    paused = AudioClock()  # 1 s, a 5 s pause, then more: due when it arrived
    paused.arrived(1.0, now=1.0)
    paused.arrived(2.0, now=7.0)
    assert paused.lag_s(2.0, now=7.1) == pytest.approx(0.1)
    assert AudioClock().lag_s(0.0, now=1.0) is None


def test_a_server_behind_refuses_new_streams_and_finishes_the_open_one(make_server, recognizer, monkeypatch):
    addr, app = make_server(max_decode_lag_s=0.3)
    server = app.state.server
    step = recognizer.step

    def slow_step(streams):  # each step 0.5 s: chunks (0.32 s of audio) queue up
        time.sleep(0.5)
        return step(streams)

    monkeypatch.setattr(recognizer, "step", slow_step)
    audio = signal(3.0)
    url = f"ws://{addr}/v1/stream"

    async def run():
        async with connect(url) as a:
            await a.send(json.dumps({"type": "start"}))
            for i in range(0, len(audio), 1600):  # 3 s of audio at once: ~9 chunks ready
                await a.send(to_pcm16(audio[i : i + 1600]))
            await asyncio.sleep(1.2)  # steps of 0.5 s: the queued chunks wait ever longer
            assert server.batcher.lag_s() > 0.3
            async with connect(url) as b:  # refused with the reason, not queued behind
                msg = json.loads(await asyncio.wait_for(b.recv(), 5))
                assert msg["code"] == "too_many_streams" and "behind real time" in msg["message"]
                await b.wait_closed()
                assert b.close_code == 1013
            assert server.metrics.decode_lag._value.get() > 0.3  # exported as well
            async with httpx.AsyncClient() as http:
                r = await http.post(f"http://{addr}/v1/transcribe",
                                    files={"file": ("a.wav", wav_bytes(signal(0.5)), "audio/wav")})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "behind real time" in r.json()["error"]["message"]
            await a.send(json.dumps({"type": "stop"}))
            msgs = await recv_all(a, timeout_s=30)
            assert msgs[-1]["type"] == "end" and not [m for m in msgs if m["type"] == "error"]
        monkeypatch.setattr(recognizer, "step", step)
        await asyncio.sleep(2.2)  # the slow steps leave the lag window
        assert server.batcher.lag_s() < 0.3
        async with connect(url) as c:  # caught up: admitted again
            await c.send(json.dumps({"type": "start"}))
            await c.send(json.dumps({"type": "stop"}))
            assert (await recv_all(c))[-1]["type"] == "end"

    asyncio.run(run())
