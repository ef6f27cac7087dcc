"""`mtspeech.client` against a live server, and local decoding from a real checkpoint file."""

from __future__ import annotations

import argparse
import io

import pytest

from mtspeech import client
from mtspeech.decoding.loader import load_recognizer
from mtspeech.streaming import StreamingConfig
from mtspeech.serve.app import create_app
from serve_helpers import live_server, reference_text, signal, tiny_checkpoint, wav_bytes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised model saved the way training saves it (config + labels + weights)."""
    texts = ["HELLO WORLD", "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG", "STREAMING SPEECH IS FUN"]
    tasks = {"asr": {"kind": "ctc", "vocab_size": 40, "dropout": 0.0}, "vad": {"kind": "vad"}}
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), texts, tasks)


def test_transcribe_files_through_the_server(recognizer, tmp_path):
    wavs = [signal(1.2, seed=k) for k in range(2)]
    paths = []
    for k, w in enumerate(wavs):
        paths.append(tmp_path / f"{k}.wav")
        paths[-1].write_bytes(wav_bytes(w))
    out = io.StringIO()
    with live_server(create_app(recognizer)) as (addr, _):
        results = client.transcribe_files(f"http://{addr}", paths, realtime=False, out=out)
        paced = client.transcribe_files(f"ws://{addr}", paths[:1], realtime=True, frame_ms=200, out=io.StringIO())
    for w, r in zip(wavs, results):
        assert r.text == reference_text(recognizer, w, endpointing=True) != "" and not r.errors
    assert paced[0].text == results[0].text
    printed = out.getvalue()
    assert " ... " in printed and f"{paths[0]} [" in printed


def test_unreadable_files_get_errors_and_the_rest_is_still_sent(recognizer, tmp_path, capsys):
    good = tmp_path / "good.wav"
    good.write_bytes(wav_bytes(signal(1.2, seed=0)))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.flac"
    with live_server(create_app(recognizer)) as (addr, _):
        results = client.transcribe_files(f"ws://{addr}", [missing, good, empty], out=io.StringIO())
        args = argparse.Namespace(server=f"ws://{addr}", files=[str(missing), str(good)], realtime=False, hotword=None,
                                  api_key=None, frame_ms=100, no_partials=True, json=False, model=None,
                                  max_reconnects=5)
        assert client.main(args) == 1  # one file failed, and said so
    assert [bool(r.errors) for r in results] == [True, False, True]
    assert results[0].errors[0]["code"] == "unreadable_audio" and "no such file" in results[0].errors[0]["message"]
    assert results[1].text == reference_text(recognizer, signal(1.2, seed=0), endpointing=True)
    assert f"{missing}: error:" in capsys.readouterr().err
    # no server there: one clear line and exit status 2, no traceback
    args.server, args.files = "ws://127.0.0.1:9", [str(good)]
    assert client.main(args) == 2
    assert "cannot stream to ws://127.0.0.1:9" in capsys.readouterr().err


def test_local_decoding_and_server_from_checkpoint(checkpoint, tmp_path):
    wav = signal(1.5, seed=4)
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(wav))
    cfg = StreamingConfig(chunk_frames=4, left_chunks=3)
    rec = load_recognizer(checkpoint, streaming=cfg, backend="torch-eager")
    expected = reference_text(rec, wav, endpointing=True)
    assert expected, "the random model should emit some pieces"
    local = client.transcribe_local(checkpoint, [path], streaming=cfg, out=io.StringIO())
    assert local[0].text == expected
    # the real sentencepiece tokenizer's detokenisation matches the recognizer's word assembly
    finals = rec.transcribe(wav, endpointing=False)
    assert finals[0].text == rec.tokenizer.decode(list(finals[0].tokens)).strip()
    with live_server(create_app(checkpoint, streaming=cfg)) as (addr, _):
        remote = client.transcribe_files(f"ws://{addr}", [path], out=io.StringIO())
    assert remote[0].text == expected


def test_cli_arguments_parse():
    from mtspeech.serve import app as serve_app

    p = argparse.ArgumentParser()
    client.add_arguments(p)
    args = p.parse_args(["a.wav", "--server", "ws://127.0.0.1:1", "--realtime"])
    assert args.realtime and args.files == ["a.wav"]
    p = argparse.ArgumentParser()
    serve_app.add_arguments(p)
    args = p.parse_args(["--model", "m.pt", "--max-streams", "3", "--endpoint-mode", "blank"])
    assert args.max_streams == 3 and args.port == 8000 and args.host == "127.0.0.1"


@pytest.mark.slow
def test_sigterm_drains_streams_and_uploads_then_exits_zero(checkpoint, tmp_path):
    """`mtspeech serve` on SIGTERM: an open WebSocket stream gets its finals and
    `shutting_down`, an HTTP transcription in flight completes, and the exit status is 0."""
    import asyncio
    import json
    import signal as signals
    import socket
    import subprocess
    import sys
    import threading
    import time

    import httpx
    from websockets.asyncio.client import connect

    from mtspeech.client import to_pcm16
    from serve_helpers import recv_all

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mtspeech.cli", "serve", "--model", str(checkpoint),
                             "--port", str(port), "--shutdown-timeout", "90", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        upload: dict = {}
        # The drain deadline (90 s) is far above the upload's decoding time (a few seconds on a
        # quiet machine) so that a loaded one does not turn the test into a race.
        data = wav_bytes(signal(120.0, seed=11))
        thread = threading.Thread(target=lambda: upload.setdefault(
            "r", httpx.post(f"http://{base}/v1/transcribe", content=data, timeout=120)))

        async def run():
            async with connect(f"ws://{base}/v1/stream") as ws:
                await ws.send(json.dumps({"type": "start", "endpointing": False}))
                await ws.send(to_pcm16(signal(2.0, seed=12)))
                thread.start()
                for _ in range(200):  # both the stream and the upload hold a slot
                    if httpx.get(f"http://{base}/healthz", timeout=1).json()["streams_open"] == 2:
                        break
                    await asyncio.sleep(0.05)
                proc.send_signal(signals.SIGTERM)
                return await recv_all(ws, timeout_s=30)

        msgs = asyncio.run(run())
        thread.join(120)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read().decode(errors="replace")
    assert [m["type"] for m in msgs][-3:] == ["final", "error", "end"], msgs
    assert msgs[-2]["code"] == "shutting_down"
    assert upload["r"].status_code == 200, upload["r"].text
    assert upload["r"].json()["duration"] == 120.0
    assert rc == 0, log


def test_hotword_flags_reach_the_local_decoder_and_the_server(recognizer, tmp_path, capsys):
    """`--hotword PHRASE[:BOOST]`: checked as a server checks a start list, then sent in `start`
    (or given to the local recognizer); a decoder that cannot be biased is refused clearly."""
    assert client.parse_hotword_flags(["new york:3", "quokka", "a:b"]) == [
        ("new york", 3.0), ("quokka", 2.0), ("a:b", 2.0)]
    with pytest.raises(ValueError, match="empty"):
        client.parse_hotword_flags(["  :2"])
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(signal(1.0, seed=2)))
    p = argparse.ArgumentParser()
    client.add_arguments(p)
    with live_server(create_app(recognizer)) as (addr, _):  # its default decoder is greedy
        args = p.parse_args([str(path), "--server", f"ws://{addr}", "--hotword", "hello:2", "--max-reconnects", "0"])
        assert client.main(args) == 1
    assert "need a beam decoder" in capsys.readouterr().out
    args = p.parse_args([str(path), "--model", "unused.pt", "--hotword", "\x00"])
    assert client.main(args) == 2 and "--hotword" in capsys.readouterr().err


def test_local_decoding_with_hotwords_on_a_beam_decoder(checkpoint, tmp_path, capsys):
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(signal(1.0, seed=2)))
    p = argparse.ArgumentParser()
    client.add_arguments(p)
    args = p.parse_args([str(path), "--model", str(checkpoint), "--decoder", "beam", "--beam-size", "4",
                         "--hotword", "hello world:3", "--json"])
    assert client.main(args) == 0
    args = p.parse_args([str(path), "--model", str(checkpoint), "--hotword", "hello"])  # auto, no LM: greedy
    assert client.main(args) == 2 and "need a beam decoder" in capsys.readouterr().err
