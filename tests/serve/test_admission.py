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
from mtspeech.serve.lag import LagMeter
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
