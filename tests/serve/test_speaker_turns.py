"""Speaker turns over the wire: `speakers` / `enrolled_speakers` in `start`, `speaker` on finals
and words, `speaker_change` messages, and the REST routes' speaker fields.

What this proves, and what not: the tiny test model is random, and a random speaker head
cannot tell voices apart, so these tests script the speaker head (and the VAD) of the
server's recognizer (`tests/tiny_asr.py`: frame t "sounds like" a given voice vector). They
check that the server streams the speaker head's frames through the change detector and
clustering (`mtspeech/streaming/speakers.py`), labels finals and words and sends each turn
in time, not that any trained model separates real voices (that needs the diarization
benchmark of issue 33).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest
from websockets.asyncio.client import connect

from mtspeech.serve.app import create_app
from serve_helpers import live_server, next_message, steady_settings, stream_messages, wav_bytes
from tiny_asr import ScriptedSpeaker, ScriptedVAD, conversation, tiny_recognizer

# voice 0 talks 0-3 s, a pause, voice 1 talks 4.5-7.5 s (the true turn: 4.5 s), a pause
TURNS = [(0, 3.0), (None, 1.5), (1, 3.0), (None, 1.5)]
TRUE_TURN_S = 4.5


@contextlib.contextmanager
def scripted_server(speech: np.ndarray, voices: np.ndarray):
    """A live server whose recognizer's VAD and speaker heads follow the script (one stream)."""
    rec = tiny_recognizer()
    rec.vad, rec.speaker = ScriptedVAD(speech), ScriptedSpeaker(voices)
    with live_server(create_app(rec, steady_settings())) as (addr, _server):
        yield addr


def test_two_voices_get_two_labels_and_the_change_comes_within_a_second():
    audio, speech, voices = conversation(TURNS)
    with scripted_server(speech, voices) as addr:
        msgs = asyncio.run(stream_messages(addr, audio, {"speakers": True}))
    changes = [m for m in msgs if m["type"] == "speaker_change"]
    assert [(m["speaker"], m.get("previous")) for m in changes] == [("S1", None), ("S2", "S1")]
    assert changes[0]["start"] == 0.0 and abs(changes[1]["start"] - TRUE_TURN_S) <= 1.0
    finals = [m for m in msgs if m["type"] == "final"]
    assert finals, "the tiny model decoded nothing"
    for f in finals:
        true = "S2" if (f["start"] + f["end"]) / 2 >= TRUE_TURN_S else "S1"
        assert f["speaker"] == true and {w["speaker"] for w in f["words"]} == {true}
    # the change is announced before the first final of the new voice
    first_change = next(i for i, m in enumerate(msgs) if m["type"] == "speaker_change" and m["speaker"] == "S2")
    first_final = next(i for i, m in enumerate(msgs) if m["type"] == "final" and m["speaker"] == "S2")
    assert first_change < first_final


def test_without_speakers_no_speaker_fields_are_sent():
    audio, speech, voices = conversation(TURNS)
    with scripted_server(speech, voices) as addr:
        msgs = asyncio.run(stream_messages(addr, audio, {}))
    assert not [m for m in msgs if m["type"] == "speaker_change"]
    finals = [m for m in msgs if m["type"] == "final"]
    assert finals and all("speaker" not in f and all("speaker" not in w for w in f["words"]) for f in finals)


def test_enrolled_names_come_back_and_strangers_stay_anonymous():
    audio, speech, voices = conversation(TURNS)
    reference = voices[speech][-20:].mean(0)  # frames of voice 1, as a client's enrolment would average
    start = {"enrolled_speakers": [{"name": "Ada Lovelace", "embedding": reference.tolist()}]}
    with scripted_server(speech, voices) as addr:
        msgs = asyncio.run(stream_messages(addr, audio, start))
    assert [m["speaker"] for m in msgs if m["type"] == "speaker_change"] == ["S1", "Ada Lovelace"]
    # past the similarity threshold no name is given
    with scripted_server(speech, voices) as addr:
        msgs = asyncio.run(stream_messages(addr, audio, {**start, "enrol_similarity": 1.0}))
    assert [m["speaker"] for m in msgs if m["type"] == "speaker_change"] == ["S1", "S2"]


def _bad_starts(dim: int) -> list[tuple[str, str]]:
    one = [0.1] * dim
    return [
        (json.dumps({"speakers": True, "enrolled_speakers": [{"name": f"p{i}", "embedding": one}
                                                             for i in range(33)]}), "enrolled_speakers"),
        (json.dumps({"enrolled_speakers": [{"name": "x", "embedding": [0.1] * 5000}]}), "embedding"),
        (json.dumps({"enrolled_speakers": [{"name": "x", "embedding": [0.1] * (dim + 1)}]}), "shape"),
        ('{"enrolled_speakers": [{"name": "x", "embedding": [NaN%s]}]}' % (", 0.1" * (dim - 1)), "embedding"),
        (json.dumps({"enrolled_speakers": [{"name": "x", "embedding": [0.0] * dim}]}), "norm"),
        (json.dumps({"enrolled_speakers": [{"name": "a\nb", "embedding": one}]}), "name"),
        (json.dumps({"enrolled_speakers": [{"name": "", "embedding": one}]}), "name"),
        (json.dumps({"enrolled_speakers": [{"name": "x" * 65, "embedding": one}]}), "name"),
        (json.dumps({"enrolled_speakers": [{"name": "S3", "embedding": one}]}), "anonymous"),
        (json.dumps({"enrolled_speakers": [{"name": "x", "embedding": one}] * 2}), "distinct"),
        (json.dumps({"speakers": True, "enrol_similarity": 3}), "enrol_similarity"),
    ]


def test_hostile_enrolment_is_a_clear_bad_message_and_the_stream_can_still_start():
    audio, speech, voices = conversation(TURNS)
    bad = _bad_starts(voices.shape[1])

    async def run(addr):
        async with connect(f"ws://{addr}/v1/stream", max_size=None) as ws:
            errors = []
            for body, _ in bad:
                await ws.send('{"type": "start", ' + body[1:])
                errors.append(await next_message(ws))
            await ws.send(json.dumps({"type": "start", "speakers": True}))
            await ws.send(json.dumps({"type": "stop"}))
            return errors, await next_message(ws)

    with scripted_server(speech, voices) as addr:
        errors, after = asyncio.run(run(addr))
    for (body, word), err in zip(bad, errors):
        assert err["type"] == "error" and err["code"] == "bad_message" and word in err["message"], (body[:80], err)
    assert after["type"] in ("end", "speaker_change", "final")


def test_a_model_without_a_speaker_head_says_so(make_server):
    addr, _ = make_server()

    async def run():
        async with connect(f"ws://{addr}/v1/stream") as ws:
            await ws.send(json.dumps({"type": "start", "speakers": True}))
            return await next_message(ws)

    err = asyncio.run(run())
    assert err["code"] == "bad_message" and "speaker-embedding task" in err["message"]


@pytest.mark.parametrize("fmt", ["diarized_json", "verbose_json", "transcribe"])
def test_rest_segments_carry_speakers(fmt):
    import httpx

    audio, speech, voices = conversation(TURNS)
    with scripted_server(speech, voices) as addr:
        if fmt == "transcribe":
            r = httpx.post(f"http://{addr}/v1/transcribe?speakers=true", content=wav_bytes(audio), timeout=60)
        else:
            r = httpx.post(f"http://{addr}/v1/audio/transcriptions", timeout=60,
                           files={"file": ("talk.wav", wav_bytes(audio), "audio/wav")},
                           data={"model": "mtspeech", "response_format": fmt})
    assert r.status_code == 200, r.text
    segments = r.json()["segments"]
    assert segments
    for seg in segments:
        true = "S2" if (seg["start"] + seg["end"]) / 2 >= TRUE_TURN_S else "S1"
        assert seg["speaker"] == true
        if fmt == "transcribe":  # words too
            assert {w["speaker"] for w in seg["words"]} == {true}
    if fmt == "diarized_json":
        assert all(seg["type"] == "transcript.text.segment" and isinstance(seg["id"], str) for seg in segments)


def test_enrolment_from_reference_audio():
    """`POST /v1/speakers/embedding` of a recording of one voice gives a reference under which
    a later stream names that voice."""
    import httpx

    ref_audio, ref_speech, ref_voices = conversation([(1, 3.0)])
    audio, speech, voices = conversation(TURNS)  # the same voice vectors (same seed)
    rec = tiny_recognizer()
    rec.vad, rec.speaker = ScriptedVAD(ref_speech), ScriptedSpeaker(ref_voices)
    with live_server(create_app(rec, steady_settings())) as (addr, _server):
        r = httpx.post(f"http://{addr}/v1/speakers/embedding", content=wav_bytes(ref_audio), timeout=60)
        assert r.status_code == 200, r.text
        ref = r.json()
        assert ref["voices"] == 1 and ref["windows"] >= 3 and len(ref["embedding"]) == voices.shape[1]
        rec.vad, rec.speaker = ScriptedVAD(speech), ScriptedSpeaker(voices)  # the conversation's script
        msgs = asyncio.run(stream_messages(addr, audio, {
            "enrolled_speakers": [{"name": "Grace", "embedding": ref["embedding"]}]}))
        assert [m["speaker"] for m in msgs if m["type"] == "speaker_change"] == ["S1", "Grace"]
        # silence only: too little speech to embed, said so
        rec.vad = ScriptedVAD(np.zeros(200, dtype=bool))
        r = httpx.post(f"http://{addr}/v1/speakers/embedding", content=wav_bytes(ref_audio), timeout=60)
        assert r.status_code == 400 and "too little speech" in r.json()["error"]["message"]


def test_speaker_routes_refuse_a_model_without_a_speaker_head(make_server):
    import httpx

    addr, _ = make_server()
    wav = wav_bytes(conversation([(0, 1.0)])[0])
    for url, kwargs in (("/v1/speakers/embedding", {"content": wav}),
                        ("/v1/transcribe?speakers=true", {"content": wav}),
                        ("/v1/audio/transcriptions", {"files": {"file": ("a.wav", wav, "audio/wav")},
                                                      "data": {"response_format": "diarized_json"}})):
        r = httpx.post(f"http://{addr}{url}", timeout=30, **kwargs)
        assert r.status_code == 400 and "speaker head" in r.json()["error"]["message"], (url, r.text)
    # verbose_json still answers, without speakers
    r = httpx.post(f"http://{addr}/v1/audio/transcriptions", timeout=30,
                   files={"file": ("a.wav", wav, "audio/wav")}, data={"response_format": "verbose_json"})
    assert r.status_code == 200 and all("speaker" not in s for s in r.json()["segments"])
