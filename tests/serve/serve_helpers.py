"""Helpers for the server tests: a tiny random recognizer, test audio, uvicorn in a thread.

"Correct" with a random model means: equal to decoding the same (16-bit quantised) audio
with the same recognizer in-process. (A module of its own, not conftest, so test files can
import it by a name no other test folder uses.)
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time

import numpy as np
import soundfile
import torch

from mtspeech.data.features import Fbank, GlobalCMVN
from mtspeech.encoders import ConformerConfig, ConformerEncoder
from mtspeech.model import MultiTaskModel
from mtspeech.streaming import StreamingConfig, StreamingRecognizer
from mtspeech.tasks.ctc import CTCConfig, CTCTask
from mtspeech.tasks.vad import VADConfig, VADTask
from serve.app import build_uvicorn

# Tiny models on 2 shared cores: one intra-op thread is ~100x faster than contended pools.
torch.set_num_threads(1)

PIECES = ["<blank>", "<unk>", "\u2581A", "\u2581B", "C", "D", "\u2581E", "F", "\u2581G", "H", "I", "\u2581J"]


class PieceTable:
    blank_id = 0

    def id_to_piece(self, i: int) -> str:
        return PIECES[i]


def tiny_recognizer(seed: int = 0) -> StreamingRecognizer:
    torch.manual_seed(seed)
    enc = ConformerEncoder(ConformerConfig(dim=32, layers=2, heads=2, conv_kernel=5, dropout=0.0,
                                           dynamic_chunk=False))
    ctc = CTCTask(CTCConfig(name="asr", vocab_size=len(PIECES), dropout=0.0), 32,
                  {"label": "text", "vocab_size": len(PIECES)})
    cmvn = GlobalCMVN(80)
    cmvn.set_stats(torch.full((80,), -6.0), torch.full((80,), 4.0))
    model = MultiTaskModel(Fbank(), cmvn, enc, {"asr": ctc, "vad": VADTask(VADConfig(), 32, {})}, "asr")
    return StreamingRecognizer(model.eval(), PieceTable(), StreamingConfig(chunk_frames=4, left_chunks=3))


def signal(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Tone sweeps and noise, quantised to 16 bits (what a pcm_s16le client sends)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t + seed)
    x = 0.3 * env * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.7 * t)) * t)
    x = x + 0.05 * rng.standard_normal(len(t))
    return (np.round(np.clip(x, -1, 1) * 32767) / 32768).astype(np.float32)


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
