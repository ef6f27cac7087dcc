"""`mtspeech_stream_connections_total{outcome}`: every /v1/stream connection is counted once,
by how it ended (what the nginx replica test sums over replicas)."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect

from mtspeech.client import to_pcm16
from serve_helpers import next_message, recv_all, signal


def _counts(app) -> dict[str, float]:
    samples = app.state.server.metrics.stream_connections.collect()[0].samples
    return {s.labels["outcome"]: s.value for s in samples if s.name.endswith("_total")}


def test_each_connection_is_counted_once_by_outcome(make_server):
    addr, app = make_server(max_streams=2)
    url = f"ws://{addr}/v1/stream"

    async def run():
        async with connect(url) as done, connect(url) as vanishing:
            await done.send(json.dumps({"type": "start"}))
            await vanishing.send(json.dumps({"type": "start"}))
            async with connect(url) as refused:  # a third while two are open: 1013
                assert (await next_message(refused))["code"] == "too_many_streams"
                await refused.wait_closed()
            await done.send(to_pcm16(signal(0.5)))
            await done.send(json.dumps({"type": "stop"}))
            assert (await recv_all(done))[-1]["type"] == "end"
            vanishing.transport.abort()  # gone without a close frame
        async with connect(url) as drained:
            await drained.send(json.dumps({"type": "start"}))
            await drained.send(to_pcm16(signal(0.5)))
            await asyncio.sleep(0.3)
            # what SIGTERM does first, on the server's own loop (uvicorn runs in a thread)
            server = app.state.server
            loop = server.batcher._task.get_loop()
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(server.drain(), loop))
            assert [m["type"] for m in await recv_all(drained)][-2:] == ["error", "end"]
            await drained.wait_closed()
            assert drained.close_code == 1001
        async with connect(url) as late:  # while draining: refused with 1001
            assert (await next_message(late))["code"] == "shutting_down"
            await late.wait_closed()

    asyncio.run(asyncio.wait_for(run(), 30))
    for _ in range(100):  # counted in the route's `finally`, just after the close
        if sum(_counts(app).values()) == 5:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert _counts(app) == {"completed": 1, "client_gone": 1, "refused": 2, "drained": 1}
