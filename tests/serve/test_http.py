"""HTTP endpoints: /v1/transcribe, OpenAI-compatible /v1/audio/transcriptions, health, metrics."""

from __future__ import annotations

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from serve_helpers import reference_text, signal, steady_settings, wav_bytes
from mtspeech.serve.app import create_app


@pytest.fixture
def client(recognizer):
    app = create_app(recognizer, steady_settings(max_upload_bytes=200_000, max_streams=4))
    with TestClient(app) as c:
        yield c


def test_transcribe_raw_and_multipart(client, recognizer):
    wav = signal(2.0, seed=1)
    expected = reference_text(recognizer, wav, endpointing=True)
    r = client.post("/v1/transcribe", content=wav_bytes(wav), headers={"Content-Type": "audio/wav"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == expected != "" and body["duration"] == 2.0
    assert body["segments"][0]["words"][0].keys() == {"word", "start", "end", "confidence"}
    r = client.post("/v1/transcribe", files={"file": ("a.wav", wav_bytes(wav), "audio/wav")})
    assert r.status_code == 200 and r.json()["text"] == expected
    # any input rate is resampled (a 44.1 kHz FLAC here)
    import torch
    import torchaudio

    wav44 = torchaudio.functional.resample(torch.from_numpy(wav), 16000, 44100).numpy()
    r = client.post("/v1/transcribe", content=wav_bytes(wav44, 44100))
    assert r.status_code == 200 and r.json()["duration"] == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("body, status, code", [
    (b"", 400, "empty_file"),
    (b"RIFF\x00\x00garbage" * 10, 415, "unsupported_audio"),
    (b"\x00" * 300_000, 413, "file_too_large"),
])
def test_bad_uploads_are_4xx_json(client, body, status, code):
    r = client.post("/v1/transcribe", content=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    r = client.post("/v1/audio/transcriptions", files={"file": ("x.wav", body)}, data={"model": "m"})
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_openai_endpoint_formats_and_errors(client, recognizer):
    wav = signal(1.5, seed=2)
    data = wav_bytes(wav)
    expected = reference_text(recognizer, wav, endpointing=True)
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                    data={"model": "mtspeech", "response_format": "text"})
    assert r.status_code == 200 and r.text.strip() == expected
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                    data={"model": "mtspeech", "response_format": "srt"})
    assert r.status_code == 200 and r.text.startswith("1\n00:00:0")
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                    data={"model": "mtspeech", "response_format": "yaml"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = client.post("/v1/audio/transcriptions", data={"model": "mtspeech"})
    assert r.status_code == 400 and "file" in r.json()["error"]["message"]


def test_health_metrics_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok", "streams_open": 0, "max_streams": 4}
    client.post("/v1/transcribe", content=b"")
    text = client.get("/metrics").text
    for name in ("mtspeech_streams_open", "mtspeech_audio_seconds_total", "mtspeech_real_time_factor_bucket",
                 "mtspeech_partial_latency_seconds_bucket", "mtspeech_final_latency_seconds_bucket",
                 'mtspeech_errors_total{code="empty_file"} 1.0'):
        assert name in text, name
    page = client.get("/")
    assert page.status_code == 200 and "/v1/stream" in page.text and "AudioWorklet" in page.text


def test_api_key_on_http(recognizer):
    app = create_app(recognizer, steady_settings(api_key="k"))
    with TestClient(app) as c:
        data = wav_bytes(signal(0.5))
        assert c.post("/v1/transcribe", content=data).status_code == 401
        # the query string is never read: uvicorn's access log would record the key
        assert c.post("/v1/transcribe?api_key=k", content=data).status_code == 401
        assert c.post("/v1/transcribe", content=data, headers={"Authorization": "Bearer k"}).status_code == 200


def test_http_past_capacity_is_503(recognizer):
    app = create_app(recognizer, steady_settings(max_streams=1))
    with TestClient(app) as c:
        app.state.server.slots.in_use = 1  # a stream holds the only slot
        r = c.post("/v1/transcribe", content=wav_bytes(signal(0.5)))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "too_many_streams"


def test_official_openai_client_round_trip(make_server, recognizer, tmp_path):
    addr, _ = make_server(api_key="sk-test")
    wav = signal(2.0, seed=5)
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(wav))
    expected = reference_text(recognizer, wav, endpointing=True)
    api = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="sk-test", max_retries=0, timeout=30)
    with open(path, "rb") as f:
        plain = api.audio.transcriptions.create(model="mtspeech", file=f)
    assert plain.text == expected != ""
    with open(path, "rb") as f:
        verbose = api.audio.transcriptions.create(model="mtspeech", file=f, response_format="verbose_json",
                                                  timestamp_granularities=["word", "segment"])
    assert verbose.text == expected and verbose.duration == pytest.approx(2.0)
    assert " ".join(s.text for s in verbose.segments) == expected
    assert [w.word for w in verbose.words] == expected.split()
    bad = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="wrong", max_retries=0)
    with open(path, "rb") as f, pytest.raises(openai.AuthenticationError):
        bad.audio.transcriptions.create(model="mtspeech", file=f)
    assert httpx.get(f"http://{addr}/healthz").json()["status"] == "ok"


def test_verbose_json_honours_timestamp_granularities(make_server, recognizer, tmp_path):
    """OpenAI's rule: verbose_json carries `segments` by default, `words` only when asked for
    (`timestamp_granularities[]`), and exactly the granularities asked for."""
    addr, _ = make_server()
    wav = signal(2.5, seed=6)
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(wav))
    finals = recognizer.transcribe(wav, endpointing=True)
    words = [w for f in finals for w in f.words]
    assert words
    api = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="any", max_retries=0, timeout=30)

    def ask(**kw):
        with open(path, "rb") as f:
            return api.audio.transcriptions.create(model="mtspeech", file=f, response_format="verbose_json", **kw)

    only_words = ask(timestamp_granularities=["word"])
    assert only_words.segments is None
    assert [(w.word, w.start, w.end) for w in only_words.words] == [(w.word, w.start, w.end) for w in words]
    only_segments = ask(timestamp_granularities=["segment"])
    assert only_segments.words is None
    assert [(s.start, s.end, s.text) for s in only_segments.segments] == [(f.start, f.end, f.text) for f in finals]
    default = ask()
    assert default.words is None and len(default.segments) == len(finals)
    both = ask(timestamp_granularities=["segment", "word"])
    assert len(both.segments) == len(finals) and len(both.words) == len(words)
    assert all(s.start <= s.end for s in both.segments) and all(w.start < w.end for w in both.words)
