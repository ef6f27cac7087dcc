"""The torch backend's traced step (`mtspeech serve --backend torch`): the same logits and
transcripts as the eager step, full windows through the graph and a stream's short last
window through eager, and a clean fallback to eager when a trace cannot be trusted."""

from __future__ import annotations

import logging

import torch

from mtspeech.export.parity import logit_parity, transcript_parity
from mtspeech.streaming import StreamingConfig, StreamingRecognizer
from mtspeech.streaming.encoder import TorchEncoderStep
from mtspeech.streaming.endpoint import EndpointConfig
from mtspeech.streaming.traced import TracedEncoderStep, traced_or_eager
from tiny_asr import CHUNK, LEFT, PieceTable, batched_finals, signal, tiny_model

RECORDINGS = [signal(3.0, seed=s) for s in (0, 1, 2)]


def recognizer(model, step=None) -> StreamingRecognizer:
    cfg = StreamingConfig(chunk_frames=CHUNK, left_chunks=LEFT, endpoint=EndpointConfig(mode="blank"))
    return StreamingRecognizer(model, PieceTable(), cfg, encoder_step=step)


def features(model, wav) -> torch.Tensor:
    with torch.inference_mode():
        feats, _ = model.features(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
    return feats[0]


def test_traced_step_gives_the_eager_logits_and_transcripts(monkeypatch):
    torch.set_num_threads(1)
    model = tiny_model(seed=0).eval()
    traced = TracedEncoderStep(model, CHUNK, LEFT)
    eager_calls = []
    original = TorchEncoderStep.update  # the eager step (the traced one's fallback for short windows)

    def counting(self, *args, **kwargs):
        eager_calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TorchEncoderStep, "update", counting)
    feats = [features(model, w) for w in RECORDINGS]  # 3 s each: 18 chunks, the last one short
    diff = logit_parity(TorchEncoderStep(model, CHUNK, LEFT), traced, feats)
    assert set(diff) == {"asr", "vad"} and max(diff.values()) < 1e-5, diff
    traced_eager = eager_calls.count("TracedEncoderStep")
    assert 0 < traced_eager <= len(RECORDINGS)  # only the short last windows ran eagerly

    eager_rec, traced_rec = recognizer(model), recognizer(model, traced)
    single = transcript_parity(eager_rec, traced_rec, RECORDINGS)
    assert all(single.texts_a) and single.texts_b == single.texts_a
    assert batched_finals(traced_rec, RECORDINGS) == single.texts_a  # batched: one graph call per step


def test_an_untrustworthy_trace_falls_back_to_eager(monkeypatch, caplog):
    def differs(self, graph, feat_dim):
        raise ValueError("the traced streaming step differs from the eager one")

    monkeypatch.setattr(TracedEncoderStep, "_check", differs)
    with caplog.at_level(logging.WARNING, logger="mtspeech.streaming.traced"):
        step = traced_or_eager(tiny_model(seed=0).eval(), CHUNK, LEFT)
    assert type(step) is TorchEncoderStep and step.name == "torch"
    assert "running it eagerly" in caplog.text and "differs" in caplog.text
