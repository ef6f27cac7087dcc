"""Speaker classification from pooled encoder states, optionally adversarial.

Head: attentive statistics pooling over the valid frames → linear embedding (`embed_dim`)
→ cosine classifier with an additive angular margin (AAM / ArcFace) softmax, the margin
warmed up from 0 over `margin_warmup_steps` updates. The label
space is the set of training speakers; an utterance whose speaker is unknown (missing, or
not a training speaker, e.g. test-unseen) is masked (`present=False`).

With `adversarial: true` a gradient-reversal layer sits between the encoder and the head:
the head still learns to recognise speakers, while the encoder receives the negated
(× `grl_lambda`) gradient and so learns speaker-invariant features.

The pooling is our own rather than speechbrain's `AttentiveStatisticsPooling`: that one
takes relative lengths and runs BatchNorm over padded frames, so a row's result would
depend on the other rows of the batch; here each row only sees its own valid frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtspeech import metrics as M
from mtspeech.tasks.base import Role, ScoredBatch, Scores, ScoringOptions, Targets, zero_loss
from mtspeech.tasks.layer_mix import LayerSpec, task_input
from mtspeech.tasks.registry import register_task


@dataclass(frozen=True)
class SpeakerConfig:
    """A speaker task. `margin` (radians) and `scale` shape the AAM softmax."""

    kind: str = "speaker"
    name: str = "speaker"
    layer: LayerSpec = -1  # an encoder layer index, or "learned" (tasks/layer_mix.py)
    weight: float = 1.0
    embed_dim: int = 128
    attention_dim: int = 64
    margin: float = 0.2
    scale: float = 30.0
    # The margin grows linearly from 0 (plain cosine softmax) to `margin` over this many
    # training updates of the head. A full margin from the start, while the embeddings are
    # still random, can drive every utterance to one class (seen once in a 30-epoch demo
    # run). 0 (the default, as before) starts at the full margin; the demo has not yet been
    # re-measured with a warm-up.
    margin_warmup_steps: int = 0
    adversarial: bool = False
    grl_lambda: float = 1.0

    @property
    def role(self) -> Role:
        return Role.SPEAKER_EMBEDDING


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `-scale` (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """x (any shape) unchanged; its gradient flips sign and is scaled by `scale`."""
    return GradientReversal.apply(x, scale)


def length_mask(lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """lens (B,) → (B, max_len) bool, True on valid frames."""
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


class AttentiveStatsPooling(nn.Module):
    """Attentive mean + std over valid frames, with global context (Okabe et al. 2018,
    as in ECAPA-TDNN): h (B,T,D), h_lens (B,) → (B, 2D).

    A row with `h_len == 0` pools its first frame rather than producing NaN.
    """

    def __init__(self, dim: int, attention_dim: int = 64):
        super().__init__()
        self.attention = nn.Sequential(
            nn.Linear(3 * dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, dim)
        )

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        mask = length_mask(h_lens.clamp(min=1), h.shape[1]).unsqueeze(-1)  # (B,T,1)
        h = h.masked_fill(~mask, 0.0)  # padding never reaches the statistics
        uniform = mask / mask.sum(1, keepdim=True)
        mean, std = _weighted_stats(h, uniform)
        context = torch.cat([h, mean.unsqueeze(1).expand_as(h), std.unsqueeze(1).expand_as(h)], -1)
        scores = self.attention(context).masked_fill(~mask, float("-inf"))
        mean, std = _weighted_stats(h, scores.softmax(dim=1))
        return torch.cat([mean, std], dim=-1)


def _weighted_stats(h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h (B,T,D), weights (B,T,D or 1) summing to 1 over T → mean, std (B,D)."""
    mean = (w * h).sum(1)
    var = (w * (h - mean.unsqueeze(1)).pow(2)).sum(1)
    return mean, var.clamp(min=1e-6).sqrt()  # clamp: sqrt'(0) is inf


@register_task("speaker")
class SpeakerTask(nn.Module):
    """Pooling → embedding → AAM cosine classifier over the training speakers.

    Args:
        cfg: the task's `SpeakerConfig`.
        dim: width D of the encoder layer it reads.
        labels: `{"speakers": [...]}` from `fit_labels`; with speaker augmentation also
            `"voices"`: the classes among them that are made-up voices (`data.augment`).
    """

    Config = SpeakerConfig

    def __init__(self, cfg: SpeakerConfig, dim: int, labels: dict):
        super().__init__()
        self.cfg = cfg
        self.name = cfg.name
        self.layer = cfg.layer
        self.role = cfg.role
        self.speakers: list[str] = list(labels["speakers"])
        self._speaker_ids = {s: i for i, s in enumerate(self.speakers)}
        voices = set(labels.get("voices", ()))
        self.register_buffer("_real", torch.tensor([s not in voices for s in self.speakers]), persistent=False)
        self.pool = AttentiveStatsPooling(dim, cfg.attention_dim)
        self.embedding = nn.Linear(2 * dim, cfg.embed_dim)
        self.classifier = nn.Parameter(torch.empty(len(self.speakers), cfg.embed_dim))
        nn.init.xavier_uniform_(self.classifier)
        # Training updates seen (a buffer: checkpointed, so a resumed run keeps its margin).
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the warm-up trained with the full margin throughout.
        state_dict.setdefault(prefix + "updates", torch.tensor(max(self.cfg.margin_warmup_steps, 0)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def fit_labels(cls, cfg: SpeakerConfig, train_utts: list, exp_dir: str | Path, data: Any = None) -> dict:
        """`{"speakers": sorted training speaker ids}`; with speaker augmentation in `data` (the
        experiment's `DataConfig`: `augment`, unless `perturbed_speaker`) also the made-up voices
        it adds, as speakers and under `"voices"`: classes to train on, never an answer (`identify`)."""
        speakers = sorted({u.speaker for u in train_utts if u.speaker is not None})
        if not speakers:
            raise ValueError(f"task {cfg.name!r}: no training utterance names its speaker")
        if data is None or data.perturbed_speaker:
            return {"speakers": speakers}
        from mtspeech.data.augment import augmented_speakers

        voices = sorted(set(augmented_speakers(speakers, data.augment)) - set(speakers))
        if not voices:
            return {"speakers": speakers}
        return {"speakers": sorted([*speakers, *voices]), "voices": voices}

    def collate(self, utts: list) -> Targets:
        """Utterances → Targets(values (B,) speaker index (0 where absent), lens (B,) ones, present)."""
        ids = [self._speaker_ids.get(u.speaker) if u.speaker is not None else None for u in utts]
        return Targets(
            values=torch.tensor([i if i is not None else 0 for i in ids], dtype=torch.long),
            lens=torch.ones(len(ids), dtype=torch.long),
            present=torch.tensor([i is not None for i in ids], dtype=torch.bool),
        )

    def embed(self, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        """h (B,T,D), h_lens (B,) → speaker embeddings (B,E) (unnormalised; use cosine for EER)."""
        if self.cfg.adversarial:
            h = grad_reverse(h, self.cfg.grl_lambda)
        return self.embedding(self.pool(h, h_lens))

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        """h (B,T,D), h_lens (B,) → cosine similarities to every training speaker (B,S) in [-1,1].

        The margin depends on the target, so it is applied in `loss`; argmax of the
        cosines is the prediction.
        """
        e = self.embed(h, h_lens)
        with torch.autocast(device_type=h.device.type, enabled=False):  # cosines near ±1 need fp32
            e = F.normalize(e.float(), dim=-1)
            return e @ F.normalize(self.classifier.float(), dim=-1).t()

    def identify(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,S) cosines → (B,) index of the most likely *real* training speaker: speaker
        augmentation's made-up voices are classes to learn from, never an answer."""
        return logits.masked_fill(~self._real, float("-inf")).argmax(-1)

    @property
    def margin(self) -> float:
        """The additive angular margin now (radians): warmed up over `margin_warmup_steps`."""
        warmup = self.cfg.margin_warmup_steps
        return self.cfg.margin * (1.0 if warmup <= 0 else min(1.0, int(self.updates) / warmup))

    def loss(self, logits: torch.Tensor, h_lens: torch.Tensor, targets: Targets) -> torch.Tensor:
        """AAM-softmax cross-entropy (ArcFace: the target's angle gets `margin` added),
        mean over present rows. Each call in training mode counts one update."""
        if self.training:
            self.updates += 1
        idx = targets.present.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            return zero_loss(logits)
        labels = targets.values[idx]
        cos = logits[idx].float().clamp(-1 + 1e-7, 1 - 1e-7)
        m = self.margin
        target_cos = cos.gather(1, labels[:, None])
        # cos(θ + m); past θ = π - m it would turn back up, so fall back to cos θ - m·sin m
        # there (ArcFace's "easy margin = False" rule).
        with_margin = target_cos * math.cos(m) - (1 - target_cos.pow(2)).sqrt() * math.sin(m)
        with_margin = torch.where(target_cos > math.cos(math.pi - m), with_margin, target_cos - math.sin(math.pi - m) * m)
        cos = cos.scatter(1, labels[:, None], with_margin)
        return F.cross_entropy(self.cfg.scale * cos, labels)

    def scorer(self, options: ScoringOptions = ScoringOptions()) -> "SpeakerScorer":
        """Accuracy on the training speakers and EER of cosine trials on the embeddings."""
        return SpeakerScorer(self, options.max_trials)


class SpeakerScorer:
    """`accuracy` over utterances of a training speaker (the most likely real speaker,
    `SpeakerTask.identify`) and `eer` of cosine trials (`metrics.make_trials`) on the pooled
    embeddings of every utterance with a speaker label: the measure that also works for
    speakers the model never saw."""

    def __init__(self, task: SpeakerTask, max_trials: int = 10_000):
        self.task, self.name, self.max_trials = task, task.name, max_trials
        self.collected: dict[str, list] = {"embeddings": [], "speakers": [], "correct": []}

    def add(self, batch: ScoredBatch) -> list[dict]:
        task, enc = self.task, batch.enc
        emb = task.embed(task_input(task, enc), enc.lens).detach().float().cpu().numpy()
        pred = task.identify(batch.logits).cpu().tolist()
        records = []
        for u, e, p in zip(batch.utts, emb, pred):
            rec = {"predicted": task.speakers[p], "ref": u.speaker}
            if u.speaker is not None:
                self.collected["embeddings"].append(e)
                self.collected["speakers"].append(u.speaker)
                if u.speaker in task.speakers:  # accuracy only means something for known speakers
                    rec["correct"] = task.speakers[p] == u.speaker
                    self.collected["correct"].append(rec["correct"])
            records.append(rec)
        return records

    def finish(self) -> Scores:
        out, c = Scores(), self.collected
        if c["correct"]:
            correct, known = sum(c["correct"]), len(c["correct"])
            out.metrics[f"{self.name}/accuracy"] = correct / known
            out.counts[f"{self.name}/accuracy"] = {"correct": correct, "total": known}
        else:
            out.not_scored[f"{self.name}/accuracy"] = "no utterance of a training speaker"
        try:
            scores, labels = M.make_trials(np.stack(c["embeddings"]) if c["embeddings"] else np.zeros((0, 1)),
                                           c["speakers"], max_trials=self.max_trials)
            eer, threshold = M.equal_error_rate(scores, labels)
            out.metrics[f"{self.name}/eer"] = eer
            out.counts[f"{self.name}/eer"] = {"target_trials": int(labels.sum()),
                                              "nontarget_trials": int(len(labels) - labels.sum()),
                                              "threshold": threshold}
        except ValueError:
            out.not_scored[f"{self.name}/eer"] = "needs both same-speaker and different-speaker pairs"
        return out
