"""`mtspeech.client` moves a stream to another replica after 1001 / 1013 / a lost connection,
against a scripted fake server: what is resent, the times, the backoff, and giving up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import threading

import numpy as np
import pytest

from mtspeech import client
from mtspeech.resumable_stream import ReconnectError, RetryPolicy, stream_audio, to_pcm16

SR = 16000
FAST = RetryPolicy(max_retries=3, base_delay_s=0.01, max_delay_s=0.04)


def _final(text: str, start: float, end: float) -> str:
    return json.dumps({"type": "final", "text": text, "start": start, "end": end,
                       "words": [{"word": text, "start": start, "end": end, "confidence": 1.0}]})


class FakeServer:
    """A /v1/stream server that plays one scripted behaviour per connection, in order, and
    keeps the PCM each connection received (after its `start`)."""

    def __init__(self, script: list[str]):
        self.script, self.received = list(script), []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    async def handler(self, ws):
        behaviour = self.script.pop(0) if self.script else "refuse_full"
        pcm = bytearray()
        self.received.append(pcm)
        if behaviour == "refuse_full":
            await ws.send(json.dumps({"type": "error", "code": "too_many_streams", "message": "full"}))
            return await ws.close(1013, "full")
        assert json.loads(await ws.recv())["type"] == "start"
        async for msg in ws:
            if isinstance(msg, str):  # stop
                break
            pcm += msg
            if behaviour == "drain" and len(pcm) >= 2 * SR:  # one second in: acknowledge 0.5 s, drain
                await ws.send(_final("first", 0.1, 0.5))
                await ws.send(json.dumps({"type": "error", "code": "shutting_down", "message": "draining"}))
                await ws.send(json.dumps({"type": "end"}))
                return await ws.close(1001, "draining")
            if behaviour == "drop" and len(pcm) >= SR:  # half a second in: the process dies
                return ws.transport.abort()
        await ws.send(_final("rest", 0.0, len(pcm) / 2 / SR))
        await ws.send(json.dumps({"type": "end"}))
        await ws.close(1000)

    @contextlib.contextmanager
    def running(self):
        from websockets.asyncio.server import serve

        async def main():
            self.stop = asyncio.Event()
            # max_queue=None: a handler that closes without reading what the client sent must not
            # stop the reading of the client's close frame behind it (websockets' flow control
            # would, until its 10 s close timeout; uvicorn has no such queue)
            async with serve(self.handler, "127.0.0.1", 0, max_queue=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                self.ready.set()
                await self.stop.wait()

        thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        assert self.ready.wait(10)
        try:
            yield f"ws://127.0.0.1:{self.port}/v1/stream"
        finally:
            self.loop.call_soon_threadsafe(self.stop.set)
            thread.join(10)


def _audio(seconds: float) -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.5, 0.5, int(seconds * SR)).astype(np.float32)


async def _frames(samples: np.ndarray, frame: int = 1600):
    for i in range(0, len(samples), frame):
        yield samples[i : i + frame]
        await asyncio.sleep(0)


def test_drain_then_full_then_resume_resends_only_what_no_final_acknowledged():
    audio = _audio(2.0)
    fake = FakeServer(["drain", "refuse_full", "complete"])
    with fake.running() as url:
        r = asyncio.run(asyncio.wait_for(stream_audio(url, _frames(audio), retry=FAST, seed=1), 20))
    assert len(fake.received) == 3
    # the third connection got exactly the audio after 0.5 s (the end of the drained final), once
    assert bytes(fake.received[2]) == to_pcm16(audio[SR // 2:])
    assert [c.close_code for c in r.reconnects] == [1001, 1013]
    assert [c.finals for c in r.reconnects] == [1, 0]
    assert [c.resumed_at_s for c in r.reconnects] == [0.5, 0.5]
    assert "draining" in r.reconnects[0].reason and "at capacity" in r.reconnects[1].reason
    # finals on the whole stream's time line; retried errors are not the stream's errors
    assert r.text == "first rest" and not r.errors
    assert (r.finals[1]["start"], r.finals[1]["end"]) == (0.5, 2.0)
    assert r.finals[1]["words"][0]["start"] == 0.5


def test_lost_connection_resends_everything_unacknowledged():
    audio = _audio(1.2)
    fake = FakeServer(["drop", "complete"])
    with fake.running() as url:
        r = asyncio.run(asyncio.wait_for(stream_audio(url, _frames(audio), retry=FAST), 20))
    assert [c.close_code for c in r.reconnects] == [1006]
    assert bytes(fake.received[1]) == to_pcm16(audio)  # no final came: all of it again
    assert r.text == "rest"


def test_gives_up_after_max_retries_with_a_clear_error():
    fake = FakeServer([])  # every connection: 1013
    with fake.running() as url:
        with pytest.raises(ReconnectError, match=r"after 3 retries without progress; last: close code 1013"):
            asyncio.run(asyncio.wait_for(stream_audio(url, _frames(_audio(0.5)), retry=FAST), 20))
    assert len(fake.received) == 4  # the first attempt and three retries
    # retry=None: the first refusal ends the stream, with the server's error
    fake = FakeServer([])
    with fake.running() as url:
        r = asyncio.run(asyncio.wait_for(stream_audio(url, _frames(_audio(0.5)), retry=None), 20))
    assert [e["code"] for e in r.errors] == ["too_many_streams"] and not r.reconnects
    fake = FakeServer(["drop"])  # a lost connection has no error message: the client names it
    with fake.running() as url:
        r = asyncio.run(asyncio.wait_for(stream_audio(url, _frames(_audio(1.0)), retry=None), 20))
    assert r.errors == [{"type": "error", "code": "connection_closed",
                         "message": "close code 1006 (connection lost without a close frame)"}]


def test_no_server_at_all_fails_at_once():
    with pytest.raises(OSError):
        asyncio.run(asyncio.wait_for(stream_audio("ws://127.0.0.1:9/v1/stream", _frames(_audio(0.2))), 5))


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half():
    policy, rng = RetryPolicy(max_retries=10, base_delay_s=0.25, max_delay_s=2.0), random.Random(0)
    for failures, step in [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (9, 2.0)]:
        delays = [policy.delay_s(failures, rng) for _ in range(200)]
        assert step / 2 <= min(delays) and max(delays) <= step
        assert max(delays) - min(delays) > step / 4  # jittered, not a constant
    with pytest.raises(ValueError, match="max_retries=-1"):
        RetryPolicy(max_retries=-1)


def test_transcribe_cli_reconnects_and_reports_it(tmp_path, capsys):
    import soundfile

    path = tmp_path / "a.wav"
    soundfile.write(path, _audio(2.0), SR, subtype="PCM_16")
    fake = FakeServer(["drain", "complete"])
    parser = argparse.ArgumentParser()
    client.add_arguments(parser)
    with fake.running() as url:
        args = parser.parse_args([str(path), "--server", url, "--json", "--no-partials"])
        assert client.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["text"] == "first rest" and not out["errors"]
    assert [c["close_code"] for c in out["reconnects"]] == [1001]
    # --max-reconnects 0: the drain ends the stream with the server's error (exit status 1)
    fake = FakeServer(["drain"])
    with fake.running() as url:
        args = parser.parse_args([str(path), "--server", url, "--max-reconnects", "0", "--json"])
        assert client.main(args) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["text"] == "first" and [e["code"] for e in out["errors"]] == ["shutting_down"]
    # retries spent: one clear line, exit status 2
    fake = FakeServer([])
    with fake.running() as url:
        args = parser.parse_args([str(path), "--server", url, "--max-reconnects", "1"])
        assert client.main(args) == 2
    assert "could not go on after 1 retries without progress; last: close code 1013" in capsys.readouterr().err
