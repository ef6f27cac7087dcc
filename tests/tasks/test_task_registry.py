"""Registry, config building and the Task protocol, shared by every task kind."""

from __future__ import annotations

import pytest
import torch

from mtspeech.config import ConfigError
from mtspeech.encoders import EncoderOutput
from mtspeech.tasks import TASKS, Role, ScoredBatch, ScoringOptions, Targets, Task, build_task, fit_task_labels, task_config


def test_every_kind_builds_from_yaml_values_and_satisfies_the_protocol(make_utt):
    utts = [make_utt("a", speaker="s1", phones=["AH"], speech=[[0.1, 0.5]]), make_utt("b", speaker="s2")]
    blocks = {
        "phones": {"kind": "ctc", "label": "phones", "layer": -2, "proj_dim": 8},
        "speaker": {"kind": "speaker", "adversarial": True, "grl_lambda": 0.1},
        "vad": {"kind": "vad", "layer": 0, "weight": 0.5},
    }
    h, h_lens = torch.randn(2, 23, 16), torch.tensor([23, 20])
    for name, block in blocks.items():
        cfg = task_config({**block, "name": name}, f"tasks.{name}")
        assert cfg.kind in TASKS and cfg.name == name
        task = build_task(cfg, 16, fit_task_labels(cfg, utts, "/nonexistent"))
        assert isinstance(task, Task) and task.layer == cfg.layer
        targets = task.collate(utts)
        logits = task(h, h_lens)
        assert task.loss(logits, h_lens, targets).dim() == 0
        assert task.role is cfg.role and isinstance(task.role, Role)
        scorer = task.scorer(ScoringOptions())
        records = scorer.add(ScoredBatch(utts, logits, EncoderOutput([h], h_lens)))
        scores = scorer.finish()
        assert len(records) == len(utts) and all(k.startswith(f"{name}/") for k in scores.metrics)
        assert scores.metrics or scores.not_scored


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="tasks.vad.hiden_dim"):
        task_config({"kind": "vad", "hiden_dim": 3}, "tasks.vad")
    with pytest.raises(ConfigError, match="tasks.x.kind"):
        task_config({"kind": "nope"}, "tasks.x")
    with pytest.raises(ValueError, match="label"):
        task_config({"kind": "ctc", "label": "graphemes"})


def test_targets_to():
    t = Targets(torch.zeros(2, 3), torch.tensor([3, 1]), torch.tensor([True, False])).to("cpu")
    assert t.values.shape == (2, 3) and t.present.dtype == torch.bool
