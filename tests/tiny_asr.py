"""A tiny, randomly initialised streaming ASR model and test signals, shared by the
streaming tests and the server tests (importable by name: pytest puts tests/ on sys.path
for tests/conftest.py).

"Correct" with a random model means: token-for-token equal to decoding the same audio
offline with the same recognizer and chunk configuration.
"""

from __future__ import annotations

import numpy as np
import torch

from mtspeech.data.features import Fbank, GlobalCMVN
from mtspeech.encoders import ConformerConfig, ConformerEncoder
from mtspeech.streaming.endpoint import EndpointConfig
from mtspeech.model import MultiTaskModel
from mtspeech.streaming import StreamingConfig, StreamingRecognizer
from mtspeech.tasks.ctc import CTCConfig, CTCTask
from mtspeech.tasks.vad import VADConfig, VADTask

PIECES = ["<blank>", "<unk>", "\u2581A", "\u2581B", "C", "D", "\u2581E", "F", "\u2581G", "H", "I", "\u2581J"]
CHUNK, LEFT = 4, 3


class PieceTable:
    """A fixed piece list standing in for a sentencepiece model."""

    blank_id = 0

    def id_to_piece(self, i: int) -> str:
        return PIECES[i]


def tiny_model(seed: int = 0) -> MultiTaskModel:
    """ASR (CTC over PIECES) + VAD on a 2-layer, 32-dim Conformer, in eval mode."""
    torch.manual_seed(seed)
    enc = ConformerEncoder(ConformerConfig(dim=32, layers=2, heads=2, conv_kernel=5, dropout=0.0,
                                           dynamic_chunk=False))
    ctc = CTCTask(CTCConfig(name="asr", vocab_size=len(PIECES), dropout=0.0), 32,
                  {"label": "text", "vocab_size": len(PIECES)})
    cmvn = GlobalCMVN(80)
    cmvn.set_stats(torch.full((80,), -6.0), torch.full((80,), 4.0))
    return MultiTaskModel(Fbank(), cmvn, enc, {"asr": ctc, "vad": VADTask(VADConfig(), 32, {})}, "asr").eval()


def tiny_recognizer(endpoint: EndpointConfig | None = None, seed: int = 0) -> StreamingRecognizer:
    cfg = StreamingConfig(chunk_frames=CHUNK, left_chunks=LEFT, endpoint=endpoint or EndpointConfig())
    return StreamingRecognizer(tiny_model(seed), PieceTable(), cfg)


def signal(seconds: float, seed: int = 0, rate: int = 16000, pcm16: bool = False) -> np.ndarray:
    """Noise with a moving, pulsing tone: enough structure to make a random model emit tokens.
    `pcm16` quantises it to 16 bits, as a pcm_s16le client sends it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t + seed)
    x = 0.3 * env * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.7 * t)) * t)
    x = (x + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    if pcm16:
        x = (np.round(np.clip(x, -1, 1) * 32767) / 32768).astype(np.float32)
    return x


def batched_finals(rec: StreamingRecognizer, recordings: list[np.ndarray]) -> list[str]:
    """Each recording's final text, all streams stepped together (one batched encoder call per
    step), then finished."""
    from mtspeech.streaming import FinalEvent

    streams = [rec.new_stream() for _ in recordings]
    for s, wav in zip(streams, recordings):
        rec.accept(s, wav)
    while all(rec.ready(s) for s in streams):
        rec.step(streams)
    texts = []
    for s in streams:
        rec.finish(s)
        texts.append(" ".join(e.text for e in rec.events(s) if isinstance(e, FinalEvent)))
    return texts
