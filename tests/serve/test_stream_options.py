"""Per-stream options of `start` over the wire: endpoint rules and the speech-activity feed."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from websockets.asyncio.client import connect

from mtspeech.client import to_pcm16
from mtspeech.streaming import FinalEvent, SpeechActivityEvent
from serve_helpers import next_message, recv_all, signal, stream_messages


def _in_process(rec, wav, **options) -> list:
    s = rec.new_stream(**options)
    rec.accept(s, wav)
    while rec.ready(s):
        rec.step([s])
    rec.finish(s)
    return rec.events(s)


def test_endpoint_rules_per_stream_reach_the_endpointer(make_server, recognizer):
    addr, _ = make_server()
    wav = signal(4.0, seed=6)
    rules = {"max_utterance_s": 0.6, "silence_after_speech_s": 0.3}
    msgs = asyncio.run(stream_messages(addr, wav, {"endpointing": True, "endpoint": rules}))
    finals = [m for m in msgs if m["type"] == "final"]
    cfg = dataclasses.replace(recognizer.config.endpoint, rule3_max_utterance_s=0.6, rule2_trailing_silence_s=0.3)
    expected = [e for e in _in_process(recognizer, wav, interim=False, endpoint=cfg) if isinstance(e, FinalEvent)]
    default = [e for e in _in_process(recognizer, wav, interim=False) if isinstance(e, FinalEvent)]
    assert [f["text"] for f in finals] == [e.text for e in expected]
    # the rules changed the segmentation: more (shorter) utterances than the server's defaults
    assert len(finals) > len(default) >= 1
    assert all(f["end"] - f["start"] <= 0.6 + 1e-6 for f in finals)


@pytest.mark.parametrize("endpoint, field", [
    ('{"max_utterance_s": NaN}', "max_utterance_s"),  # Python's JSON reads NaN and Infinity
    ('{"silence_after_speech_s": Infinity}', "silence_after_speech_s"),
    ('{"silence_without_speech_s": -1}', "silence_without_speech_s"),
    ('{"silence_after_speech_s": 0}', "silence_after_speech_s"),
    ('{"max_utterance_s": 1e9}', "max_utterance_s"),
    ('{"max_utterance_s": "long"}', "max_utterance_s"),
    ('{"min_silence": 1}', "min_silence"),
])
def test_nonsense_endpoint_rules_are_bad_message_and_recoverable(make_server, endpoint, field):
    addr, _ = make_server()

    async def run():
        async with connect(f"ws://{addr}/v1/stream") as ws:
            await ws.send('{"type": "start", "endpoint": %s}' % endpoint)
            error = await next_message(ws)
            # the stream was not started: a valid start is accepted afterwards
            await ws.send(json.dumps({"type": "start", "endpoint": {"max_utterance_s": 5}}))
            await ws.send(to_pcm16(signal(0.5)))
            await ws.send(json.dumps({"type": "stop"}))
            return error, await recv_all(ws)

    error, rest = asyncio.run(run())
    assert error["type"] == "error" and error["code"] == "bad_message"
    assert f"endpoint.{field}" in error["message"], error
    assert rest[-1] == {"type": "end"} and not [m for m in rest if m["type"] == "error"]


def test_speech_activity_feed_is_the_vad_head_frame_by_frame(make_server, recognizer):
    addr, _ = make_server()
    wav = signal(2.0, seed=8)
    msgs = asyncio.run(stream_messages(addr, wav, {"speech_activity": True, "endpointing": False}))
    feed = [m for m in msgs if m["type"] == "activity"]
    expected = [e for e in _in_process(recognizer, wav, endpointing=False, speech_activity=True)
                if isinstance(e, SpeechActivityEvent)]
    assert feed and len(feed) == len(expected)
    frame_s = recognizer.frame_shift_s
    t = 0.0
    for m, e in zip(feed, expected):
        assert m["start"] == pytest.approx(t) and m["frame_s"] == pytest.approx(frame_s)  # contiguous, from 0
        assert m["speech"] == pytest.approx(list(e.speech), abs=1e-3)
        assert all(0.0 <= p <= 1.0 for p in m["speech"])
        t += len(m["speech"]) * frame_s
    # not asked for, not sent (older clients see only partial / final / error / end)
    plain = asyncio.run(stream_messages(addr, wav, {"endpointing": False}))
    assert {m["type"] for m in plain} <= {"partial", "final", "end"}
