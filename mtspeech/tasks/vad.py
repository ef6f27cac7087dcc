"""Frame-level voice activity detection at the encoder frame rate (40 ms).

Frame arithmetic (docs/interfaces.md; `mtspeech.data.geometry.FrameGeometry`, whose pinned
defaults are the only geometry the encoders have): feature frame k covers samples
[160k, 160k + 400); the 4× subsampling (two Conv2d k=3 s=2, no padding) makes encoder frame i
read feature frames 4i … 4i+6, i.e. samples [640i, 640i + 1360). Frame i is labelled speech
when the centre of that window, `(640 i + 680) / 16000` s, lies inside a speech segment
`[start, end)` of `utt.speech`. The frame count comes from `round(duration × 16000)`
samples; the loss uses `min(h_lens, targets.lens)` frames per row, so a one-frame
disagreement with the audio actually loaded is harmless. (A dataset that speed-perturbs
audio must rescale `duration` and `speech` of the utterance it collates.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtspeech import metrics as M
from mtspeech.data.geometry import FrameGeometry
from mtspeech.tasks.base import Role, ScoredBatch, Scores, ScoringOptions, Targets, zero_loss
from mtspeech.tasks.layer_mix import LayerSpec
from mtspeech.tasks.registry import register_task

# Labels are made in the loader's workers, before any encoder exists: they read the pinned
# geometry (FeatureConfig's defaults and the conv 4x front end), which every encoder has.
GEOMETRY = FrameGeometry()


@dataclass(frozen=True)
class VADConfig:
    """A VAD task. `pos_weight` > 1 favours recall of speech frames (None: unweighted)."""

    kind: str = "vad"
    name: str = "vad"
    layer: LayerSpec = -1  # an encoder layer index, or "learned" (tasks/layer_mix.py)
    weight: float = 1.0
    hidden_dim: int | None = None  # width of a tiny MLP before the logit (None: linear head)
    pos_weight: float | None = None
    threshold: float = 0.5  # speech probability above which a frame counts as speech in metrics

    @property
    def role(self) -> Role:
        return Role.SPEECH_ACTIVITY


def encoder_frames(num_samples: int) -> int:
    """Number of encoder (40 ms) frames for `num_samples` samples at the model's rate."""
    return GEOMETRY.encoder_frames(int(num_samples))


def frame_centres_s(num_frames: int) -> torch.Tensor:
    """(num_frames,) centre time in seconds of each encoder frame's receptive window."""
    return GEOMETRY.frame_centres_s(torch.arange(num_frames, dtype=torch.float64))


def frame_labels(speech: list, num_frames: int) -> torch.Tensor:
    """Speech segments [[start_s, end_s], ...] → (num_frames,) float 0/1 labels."""
    centres = frame_centres_s(num_frames)
    labels = torch.zeros(num_frames, dtype=torch.bool)
    for start, end in speech:
        labels |= (centres >= start) & (centres < end)
    return labels.float()


@register_task("vad")
class VADTask(nn.Module):
    """Linear (or tiny MLP) head → one speech logit per encoder frame; masked BCE loss.

    Args:
        cfg: the task's `VADConfig`.
        dim: width D of the encoder layer it reads.
        labels: `{}` (VAD needs no label space).
    """

    Config = VADConfig

    def __init__(self, cfg: VADConfig, dim: int, labels: dict):
        super().__init__()
        self.cfg = cfg
        self.name = cfg.name
        self.layer = cfg.layer
        self.role = cfg.role
        if cfg.hidden_dim is None:
            self.head = nn.Linear(dim, 1)
        else:
            self.head = nn.Sequential(nn.Linear(dim, cfg.hidden_dim), nn.GELU(), nn.Linear(cfg.hidden_dim, 1))
        pos_weight = None if cfg.pos_weight is None else torch.tensor(float(cfg.pos_weight))
        self.register_buffer("pos_weight", pos_weight, persistent=False)  # from the config

    @classmethod
    def fit_labels(cls, cfg: VADConfig, train_utts: list, exp_dir: str | Path, data: Any = None) -> dict:
        """VAD has no label space to fit."""
        return {}

    def collate(self, utts: list) -> Targets:
        """Utterances → Targets(values (B,T') float 0/1, lens (B,) frames, present (B,))."""
        counts = [encoder_frames(round(u.duration * GEOMETRY.sample_rate)) for u in utts]
        values = torch.zeros(len(utts), max(counts, default=0), dtype=torch.float32)
        present = torch.tensor([u.speech is not None for u in utts], dtype=torch.bool)
        for i, (u, n) in enumerate(zip(utts, counts)):
            if u.speech is not None:
                values[i, :n] = frame_labels(u.speech, n)
        return Targets(values=values, lens=torch.tensor(counts, dtype=torch.long), present=present)

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        """h (B,T,D), h_lens (B,) → speech logits (B,T)."""
        return self.head(h).squeeze(-1)

    @staticmethod
    def speech_probs(logits: torch.Tensor) -> torch.Tensor:
        """logits (B,T) → speech probabilities (B,T)."""
        return torch.sigmoid(logits)

    def _valid(self, logits: torch.Tensor, h_lens: torch.Tensor, targets: Targets):
        """(labels (B,T) aligned to the logits, mask (B,T) of frames that count)."""
        t = logits.shape[1]
        labels = targets.values[:, :t]
        labels = F.pad(labels, (0, t - labels.shape[1]))
        lens = torch.minimum(h_lens.to(targets.lens.device), targets.lens)
        mask = (torch.arange(t, device=logits.device)[None, :] < lens[:, None]) & targets.present[:, None]
        return labels.to(logits.dtype), mask

    def loss(self, logits: torch.Tensor, h_lens: torch.Tensor, targets: Targets) -> torch.Tensor:
        """BCE-with-logits averaged over the valid frames of present rows."""
        labels, mask = self._valid(logits, h_lens, targets)
        if not mask.any():
            return zero_loss(logits)
        bce = F.binary_cross_entropy_with_logits(
            logits[mask].float(), labels[mask].float(), pos_weight=self.pos_weight, reduction="sum"
        )
        return bce / mask.sum()

    def scorer(self, options: ScoringOptions = ScoringOptions()) -> "VADScorer":
        """Frame precision, recall and F1 at the threshold, and ROC AUC."""
        return VADScorer(self)


class VADScorer:
    """Frame `precision`, `recall` and `f1` at the task's threshold and ROC `auc`,
    against frame labels from the manifest's speech segments (the task's own `collate`, exactly
    as in training), over the frames both the encoder output and the labels have."""

    def __init__(self, task: VADTask):
        self.task, self.name = task, task.name
        self.collected: dict[str, list] = {"probs": [], "labels": []}

    def add(self, batch: ScoredBatch) -> list[dict]:
        probs = self.task.speech_probs(batch.logits.detach().float()).cpu()
        targets = self.task.collate(batch.utts)
        lens = torch.minimum(batch.enc.lens.cpu(), targets.lens)
        records = []
        for b in range(len(batch.utts)):
            n = int(lens[b])
            p = probs[b, :n].numpy()
            rec = {"speech_frames_predicted": int((p > self.task.cfg.threshold).sum()), "frames": n}
            if targets.present[b]:
                y = targets.values[b, :n].numpy()
                self.collected["probs"].append(p)
                self.collected["labels"].append(y)
                rec["speech_frames_ref"] = int(y.sum())
            records.append(rec)
        return records

    def finish(self) -> Scores:
        if not self.collected["probs"]:
            return Scores(not_scored={f"{self.name}/f1": "no utterance has speech segments"})
        p, y = np.concatenate(self.collected["probs"]), np.concatenate(self.collected["labels"]) > 0.5
        pred = p > self.task.cfg.threshold
        precision, recall, f1 = M.frame_prf(pred, y)
        tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
        out = Scores({f"{self.name}/precision": precision, f"{self.name}/recall": recall, f"{self.name}/f1": f1},
                     {f"{self.name}/f1": {"tp": tp, "fp": fp, "fn": fn, "frames": int(len(y))}})
        try:
            out.metrics[f"{self.name}/auc"] = M.roc_auc(p, y)
        except ValueError:
            out.not_scored[f"{self.name}/auc"] = "needs both speech and non-speech frames"
        return out
