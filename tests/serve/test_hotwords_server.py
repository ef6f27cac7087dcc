"""Hotwords over the wire: `start.hotwords` on /v1/stream and the `hotwords` field of the REST
routes (the OpenAI SDK passes it as an extra field); hostile lists are refused naming the field."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from fastapi.testclient import TestClient
from websockets.asyncio.client import connect

from mtspeech.decoding.config import DecodingConfig
from mtspeech.client import to_pcm16
from mtspeech.serve.app import create_app
from mtspeech.streaming import FinalEvent
from mtspeech.streaming.decoders import BeamDecoder
from serve_helpers import (live_server, next_message, recv_all, signal, steady_settings, stream_messages,
                           tiny_recognizer, wav_bytes)
from tiny_asr import PIECES, longest_match_ids

PRUNE = DecodingConfig.beam_threshold  # the served beam pruning

HOTWORDS = [{"phrase": "GH", "boost": 3.0}, {"phrase": "b c", "boost": 1.5}]


class Pieces:
    """PIECES with what a beam decoder needs, and a longest-match `encode` to spell hotwords."""

    blank_id = 0
    vocab_size = len(PIECES)

    def id_to_piece(self, i: int) -> str:
        return PIECES[i]

    def encode(self, text: str) -> list[int]:
        return longest_match_ids(text, PIECES)


@pytest.fixture(scope="module")
def beam_recognizer():
    """The tiny recognizer with a lexicon-free 'beam' decoder, the server's default."""
    rec = tiny_recognizer()
    rec.decoders["beam"] = BeamDecoder(Pieces(), "asr", rec.frame_shift_s, beam_size=8, beam_threshold=PRUNE)
    rec.default_decoder = "beam"
    return rec


def in_process(rec, wav, hotwords) -> str:
    s = rec.new_stream(interim=False, endpointing=False, hotwords=[(h["phrase"], h["boost"]) for h in hotwords])
    rec.accept(s, wav)
    while rec.ready(s):
        rec.step([s])
    rec.finish(s)
    return " ".join(e.text for e in rec.events(s) if isinstance(e, FinalEvent))


def test_stream_hotwords_equal_in_process_and_change_the_search(beam_recognizer):
    wav = signal(3.0, seed=4)
    with live_server(create_app(beam_recognizer, steady_settings())) as (addr, _server):
        msgs = asyncio.run(stream_messages(addr, wav, {"endpointing": False, "hotwords": HOTWORDS}))
    finals = " ".join(m["text"] for m in msgs if m["type"] == "final")
    assert finals == in_process(beam_recognizer, wav, HOTWORDS)
    assert in_process(beam_recognizer, wav, [{"phrase": "GH", "boost": 20.0}]).count("GH") > \
        in_process(beam_recognizer, wav, []).count("GH")


@pytest.mark.parametrize("hotwords, field", [
    ([{"phrase": "CAT"}] * 10_000, "hotwords"),
    ([{"phrase": "x" * 1_000_000}], "hotwords.0.phrase"),
    ([{"phrase": "CAT\u0007"}], "hotwords.0.phrase"),
    ([{"phrase": ""}], "hotwords.0.phrase"),
    ([{"phrase": "  "}], "hotwords.0.phrase"),
    ([{"phrase": "CAT", "boost": -1}], "hotwords.0.boost"),
    ([{"phrase": "CAT", "weight": 1}], "hotwords.0.weight"),
    ("CAT", "hotwords"),
])
def test_hostile_hotwords_are_bad_message_and_the_stream_can_start_after(beam_recognizer, hotwords, field):
    settings = steady_settings(max_frame_bytes=2_000_000)  # so the 1 MB phrase reaches the protocol

    async def run(addr):
        async with connect(f"ws://{addr}/v1/stream", max_size=None) as ws:
            await ws.send(json.dumps({"type": "start", "hotwords": hotwords}))
            error = await next_message(ws)
            await ws.send(json.dumps({"type": "start", "hotwords": HOTWORDS}))
            await ws.send(to_pcm16(signal(0.5)))
            await ws.send(json.dumps({"type": "stop"}))
            return error, await recv_all(ws)

    with live_server(create_app(beam_recognizer, settings)) as (addr, _server):
        error, rest = asyncio.run(run(addr))
    assert error["type"] == "error" and error["code"] == "bad_message"
    assert field in error["message"] and len(error["message"]) < 500, error
    assert rest[-1] == {"type": "end"} and not [m for m in rest if m["type"] == "error"]


def test_hotwords_with_a_decoder_that_cannot_be_biased_are_refused(beam_recognizer):
    with live_server(create_app(beam_recognizer, steady_settings())) as (addr, _server):
        msgs = asyncio.run(stream_messages(addr, signal(0.5), {"decoder": "greedy", "hotwords": HOTWORDS}))
    assert msgs[0]["code"] == "bad_message" and "need a beam decoder" in msgs[0]["message"]


def test_rest_routes_take_hotwords_and_refuse_bad_ones(beam_recognizer):
    wav = signal(3.0, seed=4)
    expected = in_process(beam_recognizer, wav, HOTWORDS)
    with TestClient(create_app(beam_recognizer, steady_settings())) as c:
        raw = c.post("/v1/transcribe", params={"hotwords": json.dumps(HOTWORDS), "endpointing": "false"},
                     content=wav_bytes(wav))
        form = c.post("/v1/transcribe", params={"endpointing": "false"}, data={"hotwords": json.dumps(HOTWORDS)},
                      files={"file": ("a.wav", wav_bytes(wav), "audio/wav")})
        assert raw.status_code == 200 and form.status_code == 200, (raw.text, form.text)
        assert raw.json()["text"] == form.json()["text"] == expected
        for bad in ("not json", json.dumps([{"phrase": "\x00"}]), json.dumps([{"phrase": "A"}] * 10_000),
                    json.dumps({"phrase": "A"})):
            answers = [c.post("/v1/transcribe", data={"hotwords": bad},
                              files={"file": ("a.wav", wav_bytes(wav), "audio/wav")}),
                       c.post("/v1/audio/transcriptions", data={"model": "m", "hotwords": bad},
                              files={"file": ("a.wav", wav_bytes(wav), "audio/wav")})]
            if len(bad) < 1000:  # a query string that long is refused by the HTTP client itself
                answers.append(c.post("/v1/transcribe", params={"hotwords": bad}, content=wav_bytes(wav)))
            for r in answers:
                assert r.status_code == 400, r.text
                err = r.json()["error"]
                assert err["code"] == "bad_request" and err["param"] == "hotwords" and "hotwords" in err["message"]


def test_openai_client_sends_hotwords_as_an_extra_field(beam_recognizer, tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(signal(2.0, seed=5)))
    with live_server(create_app(beam_recognizer, steady_settings())) as (addr, _server):
        api = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="any", max_retries=0, timeout=30)
        with open(path, "rb") as f:
            plain = api.audio.transcriptions.create(model="mtspeech", file=f)
        with open(path, "rb") as f:
            biased = api.audio.transcriptions.create(model="mtspeech", file=f,
                                                     extra_body={"hotwords": json.dumps(HOTWORDS)})
        with open(path, "rb") as f, pytest.raises(openai.BadRequestError, match="hotwords"):
            api.audio.transcriptions.create(model="mtspeech", file=f, extra_body={"hotwords": "[{}]"})
    assert isinstance(plain.text, str) and isinstance(biased.text, str)


def test_a_server_whose_default_is_greedy_refuses_rest_hotwords(recognizer):
    with TestClient(create_app(recognizer, steady_settings())) as c:
        r = c.post("/v1/transcribe", params={"hotwords": json.dumps(HOTWORDS)}, content=wav_bytes(signal(0.5)))
    assert r.status_code == 400 and "need a beam decoder" in r.json()["error"]["message"]
