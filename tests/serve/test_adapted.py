"""`serve --adapted`: a request's API key picks the model adapted to its customer's voice.

A tiny random model is adapted (the `mtspeech.adaptation` API, on two utterances of the session
corpus) until it decodes the test signal differently; a stream or upload with the adapted key
must then decode exactly what the adapted checkpoint decodes offline, any other what the base
decodes. Start-up refuses every file that cannot be served, and no key reaches /metrics or logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch

from mtspeech.serve.adapted import AdaptedError, load_adapted, read_key_map
from mtspeech.serve.app import create_app
from mtspeech.serve.limits import ServerSettings
from serve_helpers import live_server, recv_all, signal, tiny_checkpoint, wav_bytes

ADAPTED_KEY, DELTA_KEY, BASE_KEY = "k3y-alice-7f3a9", "k3y-bob-c41d2", "k3y-base-09be1"
TASKS = {"asr": {"kind": "ctc", "vocab_size": 30, "dropout": 0.0}, "vad": {"kind": "vad"}}


@pytest.fixture(scope="module")
def models(prepared_manifests, tmp_path_factory):
    """base.pt (random), adapted.pt (its layer-norms adapted on two utterances) and
    adapted.delta.pt, a key file naming both adapted forms, and what each decodes offline."""
    from mtspeech.adaptation.command import adapt
    from mtspeech.adaptation.param_sets import ParamSetConfig
    from mtspeech.data.manifest import read_manifest
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.streaming import StreamingConfig

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("adapted_serve")
    utts = read_manifest(prepared_manifests["train"])
    base = tiny_checkpoint(folder, [u.text for u in utts], TASKS)
    adapted = folder / "voices" / "adapted.pt"
    # a small step: the adapted model still emits words, other words than the base's
    adapt(base, utts, ParamSetConfig("layer-norms"), adapted, k=2, steps=3, lr=0.003)
    keys = folder / "keys.json"
    keys.write_text(json.dumps({"keys": {ADAPTED_KEY: {"model": "voices/adapted.pt"},
                                         DELTA_KEY: {"delta": "voices/adapted.delta.pt"}}}))
    streaming = StreamingConfig(chunk_frames=4, left_chunks=3)
    wav = signal(3.0, seed=0)
    texts = {}
    for name, ckpt in (("base", base), ("adapted", adapted)):
        rec = load_recognizer(ckpt, backend="torch-eager", streaming=streaming)
        texts[name] = {e: " ".join(f.text for f in rec.transcribe(wav, endpointing=e)) for e in (False, True)}
    assert all(texts["base"].values()) and all(texts["adapted"].values()), texts
    assert texts["base"] != texts["adapted"], "the adapted model must decode the signal differently"
    return SimpleNamespace(folder=folder, base=base, adapted=adapted, keys=keys, wav=wav, texts=texts,
                           streaming=streaming)


@pytest.fixture
def serve(models):
    """serve(**settings) → (host:port, app): the base model and the key file's adapted models."""
    import contextlib

    from mtspeech.decoding.loader import load_recognizer

    stack = contextlib.ExitStack()

    def make(**settings):
        base = load_recognizer(models.base, backend="torch-eager", streaming=models.streaming)
        settings = ServerSettings(max_wait_ms=5, **settings)
        adapted = load_adapted(models.keys, models.base, base, backend="torch-eager", api_key=settings.api_key)
        app = create_app(base, settings, adapted=adapted)
        addr, _ = stack.enter_context(live_server(app))
        return addr, app

    with stack:
        yield make


async def _stream(addr: str, wav, header_key: str | None = None, start_key: str | None = None) -> list[dict]:
    from websockets.asyncio.client import connect

    from mtspeech.client import to_pcm16

    headers = {"Authorization": f"Bearer {header_key}"} if header_key else {}
    start = {"type": "start", "endpointing": False, **({"api_key": start_key} if start_key else {})}
    async with connect(f"ws://{addr}/v1/stream", additional_headers=headers) as ws:
        await ws.send(json.dumps(start))
        for i in range(0, len(wav), 1600):
            await ws.send(to_pcm16(wav[i : i + 1600]))
        await ws.send(json.dumps({"type": "stop"}))
        return await recv_all(ws)


def _final_text(messages: list[dict]) -> str:
    assert messages[-1]["type"] == "end", messages[-3:]
    assert not [m for m in messages if m["type"] == "error"], messages
    return " ".join(m["text"] for m in messages if m["type"] == "final")


def test_streams_decode_with_the_model_their_key_picks(serve, models, caplog):
    """No --api-key: the start's key or the header's picks an adapted model; no key or an unknown
    one gets the base. All at once, so the batcher steps two models' streams side by side."""
    caplog.set_level(logging.INFO)
    addr, _ = serve()
    base, adapted = models.texts["base"][False], models.texts["adapted"][False]

    async def run():
        return await asyncio.gather(
            _stream(addr, models.wav, start_key=ADAPTED_KEY), _stream(addr, models.wav, header_key=DELTA_KEY),
            _stream(addr, models.wav), _stream(addr, models.wav, start_key="nobody's key"),
            _stream(addr, models.wav, header_key=ADAPTED_KEY, start_key=DELTA_KEY))  # the header decides

    texts = [_final_text(m) for m in asyncio.run(run())]
    assert texts == [adapted, adapted, base, base, adapted]

    metrics = httpx.get(f"http://{addr}/metrics").text
    ids = {line.split('"')[1] for line in metrics.splitlines() if line.startswith("mtspeech_model_streams_total{")}
    assert len(ids) == 3 and "base" in ids and all(i == "base" or i.startswith("adapted-") for i in ids)
    assert 'mtspeech_model_streams_total{model="base"} 2.0' in metrics  # no key, and an unknown one
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("adapted model adapted-") for m in logged)  # start-up names each model by its id
    for key in (ADAPTED_KEY, DELTA_KEY):
        assert key not in metrics
        assert not [m for m in logged if key in m], "a key reached the log"


def test_uploads_decode_with_the_model_their_key_picks(serve, models):
    """With --api-key: it gets the base model, an adapted key its model, others 401; on every
    transcription route, the OpenAI one included."""
    addr, _ = serve(api_key=BASE_KEY)
    body = wav_bytes(models.wav)
    base, adapted = models.texts["base"][True], models.texts["adapted"][True]

    def transcribe(key, route="/v1/transcribe"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if route == "/v1/transcribe":
            return httpx.post(f"http://{addr}{route}", content=body, headers=headers, timeout=60)
        return httpx.post(f"http://{addr}{route}", files={"file": ("a.wav", body, "audio/wav")},
                          data={"model": "mtspeech"}, headers=headers, timeout=60)

    assert transcribe(ADAPTED_KEY).json()["text"] == adapted
    assert transcribe(DELTA_KEY).json()["text"] == adapted
    assert transcribe(BASE_KEY).json()["text"] == base
    assert transcribe(DELTA_KEY, "/v1/audio/transcriptions").json()["text"] == adapted
    assert transcribe(BASE_KEY, "/v1/audio/transcriptions").json()["text"] == base
    for key, text in ((DELTA_KEY, adapted), (BASE_KEY, base)):  # the official client: its key chooses
        api = openai.OpenAI(base_url=f"http://{addr}/v1", api_key=key, max_retries=0, timeout=60)
        assert api.audio.transcriptions.create(model="mtspeech", file=("a.wav", body)).text == text
    for key in (None, "wrong"):
        r = transcribe(key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    for key in (ADAPTED_KEY, BASE_KEY):  # an adapted key authenticates like --api-key
        assert httpx.get(f"http://{addr}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(f"http://{addr}/v1/models").status_code == 401


def test_a_server_with_a_key_refuses_streams_without_one_and_limits_all_models_together(serve, models):
    from websockets.asyncio.client import connect

    addr, _ = serve(api_key=BASE_KEY, max_streams=1)

    async def run():
        async with connect(f"ws://{addr}/v1/stream") as ws:  # a key no one was given
            await ws.send(json.dumps({"type": "start", "api_key": "wrong"}))
            assert json.loads(await ws.recv())["code"] == "unauthorized"
        await asyncio.sleep(0.1)  # the server frees the slot right after the close
        async with connect(f"ws://{addr}/v1/stream", additional_headers={"Authorization": f"Bearer {BASE_KEY}"}):
            # the one slot is the base stream's: an adapted key's stream is refused too
            async with connect(f"ws://{addr}/v1/stream",
                               additional_headers={"Authorization": f"Bearer {ADAPTED_KEY}"}) as other:
                message = json.loads(await other.recv())
                assert message["code"] == "too_many_streams", message

    asyncio.run(run())


def test_an_adapted_model_falling_behind_holds_back_new_streams_of_the_base_too(serve, models, monkeypatch):
    """Admission by decode lag reads the one batcher that steps every model: the server's lag."""
    import time

    from websockets.asyncio.client import connect

    from mtspeech.client import to_pcm16

    addr, app = serve(max_decode_lag_s=0.3)
    slow = app.state.server.router.route(ADAPTED_KEY).recognizer
    assert slow is not app.state.server.recognizer
    step = slow.step

    def slow_step(streams):  # each step 0.5 s: chunks (0.16 s of audio here) queue up
        time.sleep(0.5)
        return step(streams)

    monkeypatch.setattr(slow, "step", slow_step)

    async def run():
        async with connect(f"ws://{addr}/v1/stream") as a:
            await a.send(json.dumps({"type": "start", "api_key": ADAPTED_KEY}))
            for i in range(0, len(models.wav), 1600):  # 3 s at once: many chunks ready
                await a.send(to_pcm16(models.wav[i : i + 1600]))
            await asyncio.sleep(1.2)
            async with connect(f"ws://{addr}/v1/stream") as b:  # a base stream: refused as well
                message = json.loads(await asyncio.wait_for(b.recv(), 5))
                assert message["code"] == "too_many_streams" and "behind real time" in message["message"]
            monkeypatch.setattr(slow, "step", step)
            await a.send(json.dumps({"type": "stop"}))
            assert (await recv_all(a, timeout_s=30))[-1]["type"] == "end"

    asyncio.run(run())


# ----------------------------------------------------------------------------- start-up refusals


def _write(folder, name, content) -> object:
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _refused(models, keys, *match, api_key=None, base=None):
    from mtspeech.decoding.loader import load_recognizer

    base = base or models.base
    recognizer = load_recognizer(base, backend="torch-eager", streaming=models.streaming)
    with pytest.raises(AdaptedError) as e:
        load_adapted(keys, base, recognizer, backend="torch-eager", api_key=api_key)
    for text in match:
        assert text in str(e.value), str(e.value)
    for key in (ADAPTED_KEY, DELTA_KEY, "dup-key"):
        assert key not in str(e.value), "an error message named a key"
    return str(e.value)


@pytest.mark.parametrize("content, match", [
    ('{"keys": {"dup-key": {"model": "voices/adapted.pt"}, "dup-key": {"model": "voices/adapted.pt"}}}',
     "written twice"),
    ({"keys": {"dup-key": {"model": "voices/adapted.pt", "delta": "voices/adapted.delta.pt"}}}, "entry 1"),
    ({"keys": {ADAPTED_KEY: {"model": "voices/missing.pt"}}}, "voices/missing.pt: no such file"),
    ({"keys": {ADAPTED_KEY: {"weights": "voices/adapted.pt"}}}, '{"model": PATH}'),
    ({"keys": {" dup-key": {"model": "voices/adapted.pt"}}}, "space"),
    ({"keys": {}}, "empty"),
    ({"voices": {}}, '{"keys"'),
    ("{not json", "not valid JSON"),
])
def test_a_malformed_key_file_is_refused(models, content, match):
    _refused(models, _write(models.folder, "bad.json", content), match)


def test_yaml_is_read_and_its_duplicates_and_numbers_refused(models):
    good = _write(models.folder, "keys.yaml", f"keys:\n  {ADAPTED_KEY}: {{model: voices/adapted.pt}}\n")
    assert read_key_map(good)[ADAPTED_KEY].path == models.adapted
    dup = _write(models.folder, "dup.yml", "keys:\n  dup-key: {model: voices/adapted.pt}\n"
                                           "  dup-key: {model: voices/adapted.pt}\n")
    _refused(models, dup, "written twice")
    _refused(models, _write(models.folder, "num.yaml", "keys:\n  12345: {model: voices/adapted.pt}\n"), "quote it")
    broken = _write(models.folder, "broken.yaml", "keys:\n  dup-key: {model: voices/adapted.pt\n")
    assert "line 3" in _refused(models, broken, "not valid YAML")  # where, and never the line's text
    nested = _write(models.folder, "nested.json", {"keys": {"model": {"dup-key": "voices/adapted.pt"}}})
    _refused(models, nested, "entry 1", "exactly one of them")  # a key in the place of a field: not quoted


def test_a_missing_file_and_a_key_equal_to_api_key_are_refused(models):
    _refused(models, models.folder / "nowhere.json", "nowhere.json: no such file")
    _refused(models, models.keys, "entry 1", "--api-key", api_key=ADAPTED_KEY)


def test_a_checkpoint_of_another_vocabulary_or_architecture_is_refused(models):
    other_vocab = tiny_checkpoint(models.folder / "vocab", ["ZEBRA QUILT", "JUMPING OXEN"], TASKS)
    _refused(models, _write(models.folder, "vocab.json", {"keys": {ADAPTED_KEY: {"model": str(other_vocab)}}}),
             "entry 1", "labels", "another vocabulary")
    other_arch = tiny_checkpoint(models.folder / "arch", ["X"], {**TASKS, "asr": {**TASKS["asr"], "vocab_size": 20}})
    _refused(models, _write(models.folder, "arch.json", {"keys": {ADAPTED_KEY: {"model": str(other_arch)}}}),
             "tasks config differs")


def test_a_delta_that_does_not_fit_the_base_is_refused(models):
    delta = torch.load(models.adapted.with_name("adapted.delta.pt"), weights_only=True)
    name = next(iter(delta["tensors"]))
    for label, tensors, match in (
            ("unknown", {"encoder.blocks.7.norm.weight": delta["tensors"][name]}, "does not have"),
            ("shape", {name: torch.ones(3)}, "shape (3,)")):
        path = models.folder / f"{label}.delta.pt"
        torch.save({**delta, "tensors": tensors}, path)
        _refused(models, _write(models.folder, f"{label}.json", {"keys": {DELTA_KEY: {"delta": path.name}}}),
                 f"entry 1 (delta {path})", match)
    # a base of the same labels and shapes but other weights (trained on): only the fingerprint tells
    state = torch.load(models.base, weights_only=False)
    retrained = models.folder / "retrained.pt"
    torch.save({**state, "model": {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}},
               retrained)
    _refused(models, models.keys, "entry 2", "made from other weights", base=retrained)
    not_delta = _write(models.folder, "garbage.delta.pt", "not a tensor file")
    _refused(models, _write(models.folder, "garbage.json", {"keys": {DELTA_KEY: {"delta": not_delta.name}}}),
             "cannot read it as a delta")


def test_serve_refuses_a_bad_key_file_before_loading_a_model(models):
    import argparse

    from mtspeech.serve import app as serve_app

    parser = argparse.ArgumentParser()
    serve_app.add_arguments(parser)
    bad = _write(models.folder, "late.json", {"keys": {ADAPTED_KEY: {"model": "voices/nothing.pt"}}})
    args = ["--model", str(models.base), "--adapted", str(bad), "--workers", "1"]
    assert serve_app.main(parser.parse_args(args)) == 2
    args = ["--model", str(models.base), "--adapted", str(models.keys), "--api-key", DELTA_KEY, "--workers", "2"]
    assert serve_app.main(parser.parse_args(args)) == 2  # the supervisor checks the file before it starts workers


# ----------------------------------------------------------------------------- the served command


def _offline_text(checkpoint, wav, backend="torch-eager", streaming=None) -> str:
    from mtspeech.decoding.loader import load_recognizer

    rec = load_recognizer(checkpoint, backend=backend, streaming=streaming)
    return " ".join(f.text for f in rec.transcribe(wav, endpointing=False))


def test_the_traced_backend_runs_the_adapted_weights(models):
    """`serve`'s default backend traces each adapted model's own step: it decodes as loading the
    adapted checkpoint with that backend does (not as the base's traced graph would)."""
    from mtspeech.decoding.loader import load_recognizer

    base = load_recognizer(models.base, backend="torch", streaming=models.streaming)
    adapted = load_adapted(models.keys, models.base, base, backend="torch")[DELTA_KEY].recognizer
    assert type(adapted.encoder_step) is type(base.encoder_step)
    assert adapted.encoder_step is not base.encoder_step and adapted.model is not base.model
    text = " ".join(f.text for f in adapted.transcribe(models.wav, endpointing=False))
    assert text == _offline_text(models.adapted, models.wav, "torch", models.streaming)
    assert text == models.texts["adapted"][False]


@pytest.mark.slow  # two worker processes, each loading and tracing two models: ~30 s on two shared cores
def test_serve_command_with_workers_routes_by_key(models):
    """`mtspeech serve --adapted --workers 2`: each worker loads the file's models; a stream with
    the delta's key decodes as the adapted checkpoint, one without a key as the base; /metrics of
    the workers together names the models, and neither it nor the server's output holds a key."""
    import signal as signals
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mtspeech.cli", "serve", "--model", str(models.base),
                             "--adapted", str(models.keys), "--port", str(port), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    addr = f"127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://{addr}/healthz", timeout=2).json()["status"] == "ok":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert proc.poll() is None, proc.communicate()[0][-2000:]
            time.sleep(0.2)

        async def run():
            return await asyncio.gather(_stream(addr, models.wav, header_key=DELTA_KEY), _stream(addr, models.wav))

        adapted, base = (_final_text(m) for m in asyncio.run(run()))
        assert adapted == _offline_text(models.adapted, models.wav) != base == _offline_text(models.base, models.wav)
        metrics = httpx.get(f"http://{addr}/metrics", timeout=5).text
        assert 'mtspeech_model_streams_total{model="base"} 1.0' in metrics
        assert sum(line.startswith("mtspeech_model_streams_total{model=\"adapted-") and line.endswith(" 1.0")
                   for line in metrics.splitlines()) == 1
    finally:
        proc.send_signal(signals.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output[-2000:]
    assert "adapted model adapted-" in output  # each worker's start-up log, with the model ids
    for key in (ADAPTED_KEY, DELTA_KEY):
        assert key not in metrics and key not in output
