"""`WS /v1/stream` against a real uvicorn socket: correctness, concurrency, bad input, limits."""

from __future__ import annotations

import asyncio
import gc
import json
import struct

import numpy as np
import pytest
from websockets.asyncio.client import connect

from serve_helpers import next_message, recv_all, reference_text, rss_bytes, signal
from mtspeech.client import stream_samples, to_pcm16


_recv_all = recv_all
_next = next_message


def test_streamed_frames_equal_offline_decoding(make_server, recognizer):
    addr, _ = make_server()
    wav = signal(3.0)
    rng = np.random.default_rng(0)

    async def run():
        async with connect(f"ws://{addr}/v1/stream") as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le",
                                      "interim_results": True, "endpointing": False}))
            i = 0
            while i < len(wav):
                n = int(rng.integers(20, 101)) * 16
                await ws.send(to_pcm16(wav[i : i + n]))
                i += n
            await ws.send(json.dumps({"type": "stop"}))
            return await _recv_all(ws)

    msgs = asyncio.run(run())
    assert msgs[-1] == {"type": "end"}
    finals = [m for m in msgs if m["type"] == "final"]
    assert len(finals) == 1
    assert finals[0]["text"] == reference_text(recognizer, wav) != ""
    assert any(m["type"] == "partial" for m in msgs)
    words = finals[0]["words"]
    assert words and set(words[0]) == {"word", "start", "end", "confidence"}
    assert finals[0]["start"] == words[0]["start"] and finals[0]["end"] == words[-1]["end"]


def test_f32_and_resampled_input_with_endpointing(make_server, recognizer):
    addr, _ = make_server()
    wav = signal(2.5, seed=3)
    import torch
    import torchaudio

    wav8 = torchaudio.functional.resample(torch.from_numpy(wav), 16000, 8000).numpy()
    expected = " ".join(f.text for f in recognizer.transcribe(wav8, sample_rate=8000))

    async def run():
        async with connect(f"ws://{addr}/v1/stream") as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 8000, "encoding": "f32le"}))
            for i in range(0, len(wav8), 400):
                await ws.send(wav8[i : i + 400].astype("<f4").tobytes())
            await ws.send(json.dumps({"type": "stop"}))
            return await _recv_all(ws)

    msgs = asyncio.run(run())
    assert " ".join(m["text"] for m in msgs if m["type"] == "final") == expected != ""


def test_sixteen_concurrent_streams_are_batched_and_correct(make_server, recognizer):
    addr, app = make_server(max_batch_size=16, max_wait_ms=20)
    wavs = [signal(1.5 + 0.1 * k, seed=k) for k in range(16)]

    async def run():
        return await asyncio.gather(*[
            stream_samples(f"ws://{addr}/v1/stream", w, frame_ms=60, endpointing=False) for w in wavs])

    results = asyncio.run(run())
    for w, r in zip(wavs, results):
        assert not r.errors
        assert r.text == reference_text(recognizer, w)
    metrics = app.state.server.metrics
    batch = metrics.batch_size.collect()[0].samples
    count = next(s.value for s in batch if s.name.endswith("_count"))
    total = next(s.value for s in batch if s.name.endswith("_sum"))
    assert total / count > 1.5, "streams should share decoding steps"


def _stream_exactly(addr: str, recognizer, n: int) -> None:
    """Stream n signals of different lengths at once; each decodes exactly as in-process."""
    wavs = [signal(1.2 + 0.1 * k, seed=k) for k in range(n)]

    async def run():
        return await asyncio.gather(*[
            stream_samples(f"ws://{addr}/v1/stream", w, frame_ms=60, endpointing=False) for w in wavs])

    for w, r in zip(wavs, asyncio.run(run())):
        assert not r.errors
        assert r.text == reference_text(recognizer, w)


def test_two_decode_threads_run_steps_at_once_on_disjoint_streams(make_server, recognizer):
    """`decode_threads=2`: two steps run concurrently (each slowed here so they must overlap),
    never with a stream in both, and every stream still decodes exactly."""
    import itertools
    import threading
    import time

    addr, app = make_server(max_batch_size=4, max_wait_ms=0, decode_threads=2)
    batcher = app.state.server.batcher
    work, lock = batcher._work, threading.Lock()
    active: dict[int, set] = {}  # step id → its streams
    seen, step_ids = {"max_steps": 0}, itertools.count()

    def spy(recognizer, streams, flush):
        ids = {s.id for s in [*streams, *flush]}
        with lock:
            assert all(not (ids & other) for other in active.values()), "a stream is in two steps"
            key = next(step_ids)
            active[key] = ids
            seen["max_steps"] = max(seen["max_steps"], len(active))
        try:
            time.sleep(0.02)
            return work(recognizer, streams, flush)
        finally:
            with lock:
                del active[key]

    batcher._work = spy
    _stream_exactly(addr, recognizer, 8)
    assert seen["max_steps"] == 2


def test_inline_decoding_runs_steps_on_the_event_loop_thread(make_server, recognizer):
    """`decode_threads=0`: every step runs on the event loop's own thread (no executor), and the
    streams decode exactly as with threads."""
    addr, app = make_server(max_batch_size=4, max_wait_ms=5, decode_threads=0)
    batcher = app.state.server.batcher
    work, on_loop = batcher._work, []

    def spy(recognizer, streams, flush):
        try:  # raises on any thread but one running an event loop: the server's
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return work(recognizer, streams, flush)

    batcher._work = spy
    _stream_exactly(addr, recognizer, 6)
    assert batcher._executor is None
    assert on_loop and all(on_loop)


def test_decode_threads_below_zero_is_refused_before_a_model_loads(tmp_path):
    import argparse

    from mtspeech.serve import app as serve_app
    from mtspeech.serve.limits import ServerSettings

    with pytest.raises(ValueError, match="decode_threads=-1"):
        ServerSettings(decode_threads=-1)
    assert ServerSettings(decode_threads=0).decode_threads == 0
    parser = argparse.ArgumentParser()
    serve_app.add_arguments(parser)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not read: the flag is refused first")
    assert serve_app.main(parser.parse_args(["--model", str(ckpt), "--decode-threads", "-1"])) == 2


def test_bad_input_gets_clear_errors_while_another_stream_works(make_server, recognizer):
    addr, app = make_server(max_frame_bytes=64 * 1024, idle_timeout_s=0.6)
    url = f"ws://{addr}/v1/stream"
    good = signal(2.0, seed=7)

    async def good_stream():  # paced at 4x real time so it overlaps everything below
        return await stream_samples(url, good, frame_ms=100, endpointing=False, realtime=False)

    async def expect_error(ws, code):
        msg = await _next(ws)
        assert msg["type"] == "error" and msg["code"] == code, msg
        assert msg["message"]
        return msg

    async def bad_clients():
        async with connect(url) as ws:
            await ws.send("not json {")
            await expect_error(ws, "bad_json")
            await ws.send(json.dumps([1, 2]))
            await expect_error(ws, "bad_json")
            await ws.send(json.dumps({"type": "hello"}))
            await expect_error(ws, "unknown_type")
            await ws.send(b"\x00\x01" * 100)
            await expect_error(ws, "audio_before_start")
            for rate in (0, 1_000_000):
                await ws.send(json.dumps({"type": "start", "sample_rate": rate}))
                await expect_error(ws, "unsupported_sample_rate")
            await ws.send(json.dumps({"type": "start", "sample_rate": "fast"}))
            await expect_error(ws, "bad_message")
            await ws.send(json.dumps({"type": "start", "encoding": "mp3"}))
            await expect_error(ws, "bad_message")
            # the same connection still works after all that
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            await ws.send(json.dumps({"type": "start"}))
            await expect_error(ws, "already_started")
            await ws.send(b"\x00\x01\x02")  # odd length: not whole 16-bit samples
            await expect_error(ws, "bad_audio")
            await ws.send(to_pcm16(good[:8000]))
            await ws.send(json.dumps({"type": "stop"}))
            msgs = await _recv_all(ws)
            assert msgs[-1]["type"] == "end"
            assert " ".join(m["text"] for m in msgs if m["type"] == "final") == reference_text(
                recognizer, good[:8000])

        async with connect(url) as ws:  # f32le NaN samples
            await ws.send(json.dumps({"type": "start", "encoding": "f32le"}))
            await ws.send(struct.pack("<2f", 0.0, float("nan")))
            await expect_error(ws, "bad_audio")

        async with connect(url) as ws:  # oversize frame: error, end, close 1009
            await ws.send(json.dumps({"type": "start"}))
            await ws.send(b"\x00" * (64 * 1024 + 2))
            msgs = await _recv_all(ws)
            assert msgs[0]["code"] == "frame_too_large" and msgs[-1]["type"] == "end"
            await ws.wait_closed()
            assert ws.close_code == 1009

        async with connect(url) as ws:  # idle timeout: finalized, error, end
            await ws.send(json.dumps({"type": "start"}))
            await ws.send(to_pcm16(good[:16000]))
            msgs = await _recv_all(ws)
            assert [m["type"] for m in msgs][-2:] == ["error", "end"]
            assert msgs[-2]["code"] == "idle_timeout"
            assert any(m["type"] == "final" for m in msgs)

        # a client vanishing mid-stream (TCP dropped without a close frame)
        ws = await connect(url)
        await ws.send(json.dumps({"type": "start"}))
        await ws.send(to_pcm16(good[:8000]))
        ws.transport.abort()

    async def run():
        good_result, _ = await asyncio.gather(good_stream(), bad_clients())
        return good_result

    result = asyncio.run(run())
    assert not result.errors and result.text == reference_text(recognizer, good)
    server = app.state.server
    for _ in range(100):  # the vanished client is cleaned up
        if server.slots.in_use == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert server.slots.in_use == 0 and server.batcher.open_jobs == 0
    errors = {s.labels["code"] for s in server.metrics.errors.collect()[0].samples if s.value > 0}
    assert {"bad_json", "unknown_type", "frame_too_large", "idle_timeout", "client_disconnected"} <= errors


def test_stream_limits_capacity_and_api_key(make_server):
    addr, _ = make_server(max_streams=2, api_key="s3cret", max_stream_seconds=1.0)
    url = f"ws://{addr}/v1/stream"
    auth = {"Authorization": "Bearer s3cret"}

    async def refused(ws, start):
        await ws.send(json.dumps(start))
        assert (await _next(ws))["code"] == "unauthorized"
        await ws.wait_closed()
        assert ws.close_code == 1008
        await asyncio.sleep(0.1)  # the server frees the slot right after the close

    async def run():
        async with connect(url) as ws:  # no key at all
            await refused(ws, {"type": "start"})
        async with connect(url) as ws:  # a wrong key in the start message
            await refused(ws, {"type": "start", "api_key": "wrong"})
        async with connect(url + "?api_key=s3cret") as ws:  # the query string is never read (logs)
            await refused(ws, {"type": "start"})
        async with connect(url, additional_headers={"Authorization": "Bearer wrong"}) as ws:
            assert (await _next(ws))["code"] == "unauthorized"
        a = await connect(url, additional_headers=auth)
        b = await connect(url)  # browsers: the key in the start message
        await b.send(json.dumps({"type": "start", "api_key": "s3cret"}))
        async with connect(url, additional_headers=auth) as c:  # third: refused, not hung
            msg = await _next(c)
            assert msg["code"] == "too_many_streams" and "2 streams" in msg["message"]
            await c.wait_closed()
            assert c.close_code == 1013 and "capacity" in c.close_reason
        # max stream seconds: audio past 1 s is refused with a final flush
        await a.send(json.dumps({"type": "start"}))
        for i in range(0, 24000, 1600):
            await a.send(to_pcm16(signal(1.5)[i : i + 1600]))
        msgs = await _recv_all(a)
        assert [m["code"] for m in msgs if m["type"] == "error"] == ["stream_too_long"]
        assert msgs[-1]["type"] == "end"
        await a.close()
        await b.close()
        await asyncio.sleep(0.2)
        async with connect(url, additional_headers=auth) as d:  # slots were freed
            await d.send(json.dumps({"type": "stop"}))
            assert (await _recv_all(d))[-1]["type"] == "end"

    asyncio.run(run())


@pytest.mark.slow
def test_rss_flat_over_a_thousand_connections(make_server):
    """Soak: 1,000 connect / stream / close cycles (a third leave without stop) leave the
    process RSS within 5 % of where it was after a warm-up. Admission by lag is off: on a
    loaded CI machine a lagging step would refuse cycles, which is not what this measures."""
    addr, app = make_server(max_decode_lag_s=0)
    url = f"ws://{addr}/v1/stream"
    audio = to_pcm16(signal(0.4))

    async def cycle(i):
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "start"}))
            await ws.send(audio)
            if i % 3 == 0:  # some leave without stop
                return
            await ws.send(json.dumps({"type": "stop"}))
            await _recv_all(ws)

    async def run(n, start):
        for i in range(start, start + n):
            await cycle(i)

    asyncio.run(run(100, 0))  # warm-up: caches, lazy imports, allocator pools
    gc.collect()
    before = rss_bytes()
    asyncio.run(run(1000, 100))
    asyncio.run(asyncio.sleep(0.3))
    gc.collect()
    after = rss_bytes()
    server = app.state.server
    assert server.slots.in_use == 0 and not server.connections and server.batcher.open_jobs == 0
    assert after <= 1.05 * before, f"RSS grew from {before / 2**20:.0f} to {after / 2**20:.0f} MiB over 1,000 streams"


def test_graceful_shutdown_finalizes_open_streams(recognizer):
    from serve_helpers import live_server
    from mtspeech.serve.app import create_app

    app = create_app(recognizer)
    wav = signal(2.0, seed=9)

    async def run(addr, server):
        async with connect(f"ws://{addr}/v1/stream") as ws:
            await ws.send(json.dumps({"type": "start", "endpointing": False}))
            await ws.send(to_pcm16(wav))
            await asyncio.sleep(0.3)
            server.should_exit = True  # what SIGTERM does
            return await _recv_all(ws)

    with live_server(app) as (addr, server):
        msgs = asyncio.run(run(addr, server))
    types = [m["type"] for m in msgs]
    assert types[-3:] == ["final", "error", "end"], types
    assert msgs[-2]["code"] == "shutting_down"
    assert msgs[-3]["text"] == reference_text(recognizer, wav)
