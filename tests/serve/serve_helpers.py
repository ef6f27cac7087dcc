"""Helpers for the server tests: test audio, uvicorn in a thread (the tiny random
recognizer comes from tests/tiny_asr.py).

"Correct" with a random model means: equal to decoding the same (16-bit quantised) audio
with the same recognizer in-process. (A module of its own, not conftest, so test files can
import it by a name no other test folder uses.)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from mtspeech.serve.app import build_uvicorn
from tiny_asr import signal as _signal
from tiny_asr import tiny_recognizer

# Tiny models on 2 shared cores: one intra-op thread is ~100x faster than contended pools.
torch.set_num_threads(1)

__all__ = ["LM_TEXTS", "lm_checkpoint", "tiny_checkpoint", "live_server", "next_message", "recv_all", "reference_text", "rss_bytes", "signal", "tiny_recognizer",
           "wav_bytes"]


def signal(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """The test signal quantised to 16 bits: what a pcm_s16le client sends."""
    return _signal(seconds, seed, rate, pcm16=True)


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def reference_text(rec: StreamingRecognizer, samples: np.ndarray, endpointing: bool = False) -> str:
    return " ".join(f.text for f in rec.transcribe(samples, endpointing=endpointing))


@contextlib.contextmanager
def live_server(app):
    """Run `app` under uvicorn in a thread on a free loopback port; yields (host:port, server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = build_uvicorn(app, "127.0.0.1", port, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 10 s"
    try:
        yield f"127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


async def recv_all(ws, limit: int = 100_000, timeout_s: float = 20.0) -> list[dict]:
    """WebSocket messages until "end" or the server closes (bounded in count and time)."""
    from websockets.exceptions import ConnectionClosed

    out = []
    try:
        for _ in range(limit):
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
            out.append(msg)
            if msg["type"] == "end":
                break
    except ConnectionClosed:
        pass
    return out


async def stream_messages(addr: str, wav: np.ndarray, start: dict, chunk: int = 1600) -> list[dict]:
    """One /v1/stream session: `start`, the audio as PCM16 frames of `chunk` samples, `stop`;
    every message the server sent until it closed."""
    from websockets.asyncio.client import connect

    from mtspeech.client import to_pcm16

    async with connect(f"ws://{addr}/v1/stream") as ws:
        await ws.send(json.dumps({"type": "start", **start}))
        for i in range(0, len(wav), chunk):
            await ws.send(to_pcm16(wav[i : i + chunk]))
        await ws.send(json.dumps({"type": "stop"}))
        return await recv_all(ws)


async def next_message(ws, timeout_s: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


def rss_bytes() -> int:
    """This process's resident set size (tracemalloc cannot see tensors or numpy buffers)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# The training transcripts of `lm_checkpoint`: its `--lm auto` trigram and lexicons spell these words.
LM_TEXTS = ("HELLO WORLD", "THE QUICK BROWN FOX", "THE LAZY DOG", "HELLO THE DOG")


def tiny_checkpoint(folder: Path, texts, tasks: dict, train: str = "unused.jsonl", phones: bool = False) -> Path:
    """`folder/model.pt`: a randomly initialised model (conformer 32 x 2 and `tasks`) saved the way
    training saves it (config + labels + weights), its labels fitted on `texts` (with CMUdict
    phones if `phones`); `train` is the training manifest its config names."""
    from mtspeech.data.lexicon import Lexicon
    from mtspeech.data.manifest import Utterance
    from mtspeech.experiment import build_model, experiment_from_dict, experiment_to_dict, fit_labels

    lex = Lexicon(oov="g2p") if phones else None
    utts = [Utterance(id=str(i), audio="x.wav", duration=1.0, text=t,
                      phones=[p for w in t.split() for p in lex.word_phones(w)] if lex else None)
            for i, t in enumerate(texts)]
    exp = experiment_from_dict({
        "exp_dir": str(folder), "data": {"train": train},
        "encoder": {"kind": "conformer", "dim": 32, "layers": 2, "heads": 2, "conv_kernel": 5, "dropout": 0.0},
        "tasks": tasks,
    })
    torch.manual_seed(0)
    labels = fit_labels(exp, utts)
    model = build_model(exp, labels)
    path = folder / "model.pt"
    torch.save({"model": model.state_dict(), "config": experiment_to_dict(exp), "labels": labels}, path)
    return path


def lm_checkpoint(tmp_path: Path) -> Path:
    """`tmp_path/model.pt`: a tiny random model with ASR, phone and VAD heads whose config names
    `tmp_path/train.jsonl` (LM_TEXTS, no audio) as its training data, so `--lm auto` works."""
    from mtspeech.data.lexicon import Lexicon
    from mtspeech.data.manifest import Utterance, write_manifest

    lex = Lexicon(oov="g2p")
    write_manifest(tmp_path / "train.jsonl", [
        Utterance(id=str(i), audio="x.wav", duration=1.0, text=t,
                  phones=[p for w in t.split() for p in lex.word_phones(w)]) for i, t in enumerate(LM_TEXTS)])
    tasks = {"asr": {"kind": "ctc", "vocab_size": 30, "dropout": 0.0},
             "phones": {"kind": "ctc", "label": "phones", "layer": 0, "dropout": 0.0}, "vad": {"kind": "vad"}}
    return tiny_checkpoint(tmp_path, LM_TEXTS, tasks, train=str(tmp_path / "train.jsonl"), phones=True)


def steady_settings(**settings):
    """ServerSettings for a behaviour test: admission by decode lag off unless the test sets it.
    On a loaded test machine (another suite, a helper's job) a slow step can push the measured
    lag past the default budget, and the server then rightly answers 503 / 1013 where the test
    expects its answer to the request; the admission tests set `max_decode_lag_s` themselves."""
    from mtspeech.serve.limits import ServerSettings

    return ServerSettings(**({"max_decode_lag_s": 0.0} | settings))
