"""Shared helpers for the task tests: utterance records and a tiny trainable "encoder"."""

from __future__ import annotations

import pytest
import torch

from mtspeech.data.manifest import Utterance


@pytest.fixture
def make_utt():
    """make_utt(id, **fields) → Utterance with defaults for everything not given."""

    def make(uid: str = "u", **fields) -> Utterance:
        base = dict(id=uid, audio=f"/nonexistent/{uid}.flac", duration=1.0, text=None, speaker=None,
                    sex=None, phones=None, speech=None)
        base.update(fields)
        return Utterance(**base)

    return make


def overfit(task: torch.nn.Module, h: torch.Tensor, h_lens: torch.Tensor, targets, steps: int = 40,
            lr: float = 1e-2) -> tuple[float, float]:
    """Train a linear "encoder" + the task head on fixed features; returns (first, last) loss."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(h.shape[-1], h.shape[-1])
    opt = torch.optim.Adam([*encoder.parameters(), *task.parameters()], lr=lr)
    task.train()
    losses = []
    for _ in range(steps):
        loss = task.loss(task(encoder(h), h_lens), h_lens, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.fixture
def overfit_fn():
    return overfit


def score(task: torch.nn.Module, utts: list, logits: torch.Tensor, h: torch.Tensor | None = None,
          h_lens: torch.Tensor | None = None):
    """The task's scorer over one batch: (Scores, per-row records). `h` (B,T,D): the one
    encoder layer the task reads (needed by heads that read more than their logits)."""
    from mtspeech.encoders import EncoderOutput
    from mtspeech.tasks import ScoredBatch

    if h_lens is None:
        h_lens = torch.full((len(utts),), logits.shape[1], dtype=torch.long)
    if h is None:
        h = torch.zeros(len(utts), logits.shape[1], 1)
    task.layer = -1 if task.layer == "learned" else task.layer
    scorer = task.scorer()
    records = scorer.add(ScoredBatch(utts, logits, EncoderOutput([h], h_lens)))
    return scorer.finish(), records


@pytest.fixture
def score_fn():
    return score
