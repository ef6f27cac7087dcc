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


# ----------------------------------------------------------------------------- scripted heads
# Heads that read no audio, for tests of what the recognizer does with a head's output. A
# random tiny model's speaker head cannot tell voices apart, so speaker-turn tests script it.


class ScriptedVAD(torch.nn.Module):
    """A VAD head that reads no audio: speech probability from a per-frame schedule (B=1)."""

    layer = -1

    def __init__(self, speech: np.ndarray):
        super().__init__()
        self.speech = speech
        self.frame = 0

    def forward(self, h, h_lens):
        t = h.shape[1]
        p = self.speech[self.frame : self.frame + t]
        self.frame += t
        return torch.from_numpy(np.where(p, 8.0, -8.0)).float()[None]

    @staticmethod
    def speech_probs(logits):
        return torch.sigmoid(logits)


class ScriptedSpeaker(torch.nn.Module):
    """A speaker head that reads no audio: encoder frame t "sounds like" `voices[t]` (T, D) (B=1;
    frames past the schedule are zeros). `embed` is the frames' mean, as `SpeakerFrames.embed`
    pools a real head's frames."""

    name, layer = "speaker", -1

    def __init__(self, voices: np.ndarray):
        super().__init__()
        self.voices = torch.as_tensor(voices, dtype=torch.float32)
        self.embed_dim = self.voices.shape[1]
        self.frame = 0

    def forward(self, h, h_lens):
        t = h.shape[1]
        out = torch.zeros(t, self.embed_dim)
        part = self.voices[self.frame : self.frame + t]
        out[: len(part)] = part
        self.frame += t
        return out[None]

    def embed(self, frames: torch.Tensor) -> np.ndarray:
        return frames.mean(0).numpy()


def conversation(turns: list[tuple[int | None, float]], dim: int = 16, seed: int = 0):
    """A scripted conversation: turns [(voice index or None for a pause, seconds)] →
    (audio (N,) at the model's rate: a different test signal per voice, quiet noise in pauses;
    per-frame speech (T,) bool; per-frame voice vectors (T, dim), unit voice + noise)."""
    geometry = tiny_model().geometry
    rng = np.random.default_rng(seed)
    voice = rng.standard_normal((8, dim))
    voice /= np.linalg.norm(voice, axis=1, keepdims=True)
    audio, speech, frames = [], [], []
    for who, seconds in turns:
        n = round(seconds / geometry.frame_shift_s)
        audio.append(0.003 * rng.standard_normal(int(seconds * geometry.sample_rate)).astype(np.float32)
                     if who is None else signal(seconds, seed=who, rate=geometry.sample_rate))
        speech += [who is not None] * n
        base = np.zeros(dim) if who is None else voice[who]
        frames.append(base + 0.1 * rng.standard_normal((n, dim)))
    return np.concatenate(audio), np.array(speech), np.concatenate(frames)


def longest_match_ids(text: str, pieces: list[str]) -> list[int]:
    """Greedy longest-match piece ids of `text`, as a sentencepiece look-alike: each word starts
    with "\u2581"; a remainder no piece starts gives <unk> (id 1) and ends the word."""
    ids = []
    for word in text.split():
        rest = "\u2581" + word
        while rest:
            i = max((j for j in range(2, len(pieces)) if rest.startswith(pieces[j])),
                    key=lambda j: len(pieces[j]), default=1)
            ids.append(i)
            rest = rest[len(pieces[i]):] if i != 1 else ""
    return ids
