"""Adaptation fixtures: a tiny model trained briefly on the session corpus, saved once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_experiment import tiny_experiment


@pytest.fixture(scope="session")
def tiny_trained(prepared_manifests, tmp_path_factory) -> Path:
    """final.pt of the four-task tiny model after a few epochs (no augmentation): its ASR loss
    has left the random start, so what adaptation changes is measured on a model that learned."""
    from mtspeech.experiment import experiment_from_dict
    from mtspeech.train import train

    torch.set_num_threads(1)  # tiny models on shared cores: one thread is fastest
    exp_dir = tmp_path_factory.mktemp("adapt_exp")
    cfg = tiny_experiment(prepared_manifests, exp_dir, data={"max_batch_seconds": 5.0, "speed_perturb": None},
                          specaugment=None, optim={"lr": 5e-3},
                          train={"epochs": 4, "log_every_steps": 50, "average_best": 1})
    train(experiment_from_dict(cfg))
    return exp_dir / "final.pt"


@pytest.fixture(scope="session")
def new_condition(prepared_manifests, tmp_path_factory) -> Path:
    """A manifest of utterances the tiny model never trained on (dev, test, held-out voices,
    another engine), all heard through one fixed new channel: a tilt that boosts the highs and
    a level 10 dB down. One "new voice" with a shared, learnable difference, many utterances."""
    import dataclasses

    import soundfile
    from scipy.signal import lfilter

    from mtspeech.data.manifest import read_manifest, write_manifest

    out = tmp_path_factory.mktemp("new_condition")
    utts = []
    for split in ("dev", "test", "test-unseen", "test-engine"):
        for u in read_manifest(prepared_manifests[split]):
            wav, rate = soundfile.read(u.audio, dtype="float32")
            path = out / f"{u.id}.wav"
            soundfile.write(path, (0.3 * lfilter([1.0, -0.9], [1.0], wav)).astype("float32"), rate)
            utts.append(dataclasses.replace(u, audio=str(path), speaker="channel"))
    write_manifest(out / "voice.jsonl", utts)
    return out / "voice.jsonl"
