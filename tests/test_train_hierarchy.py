"""The trainer with hierarchical CTC and GradNorm: a few steps train, GradNorm's weights move
and are logged, and the checkpoint rebuilds the conditioned model from its file alone."""

import json

import pytest

from mtspeech.checkpoint import load_model
from mtspeech.experiment import experiment_from_dict
from mtspeech.train import train
from tiny_experiment import tiny_experiment


def test_conditioned_intermediate_gradnorm_trains_and_reloads(prepared_manifests, tmp_path):
    cfg = tiny_experiment(
        prepared_manifests, tmp_path / "exp",
        encoder={"layers": 3},
        tasks={"asr": {"kind": "ctc", "label": "text", "layer": -1, "vocab_size": 30,
                       "intermediate_layers": [1], "condition": True},
               "phones": {"kind": "ctc", "label": "phones", "layer": 0, "weight": 0.3, "condition": True}},
        weighting={"kind": "gradnorm", "lr": 0.05},
        train={"epochs": 1, "max_steps": 4, "average_best": 1},
    )
    train(experiment_from_dict(cfg))
    records = [json.loads(line) for line in (tmp_path / "exp" / "train_log.jsonl").read_text().splitlines()]
    weights = [(r["weight/asr"], r["weight/phones"]) for r in records if "weight/asr" in r]
    assert len(weights) >= 2 and weights[-1] != (1.0, 0.3)  # GradNorm moved them ...
    last = [r for r in records if "weight/asr" in r][-1]
    assert sum(last[f"weight/{n}"] for n in ("asr", "phones", "speaker", "vad")) == pytest.approx(1.9)  # ... keeping Σ
    model, exp, _ = load_model(tmp_path / "exp" / "final.pt")  # strict: the conditioners are in the file
    assert {k: set(v) for k, v in model.encoder.conditioners.items()} == {"0": {"phones"}, "1": {"asr"}}
    assert exp.tasks["asr"].intermediate_layers == (1,)
