"""The tiny experiment config the training, evaluation and ablation tests start from
(importable by name: pytest puts tests/ on sys.path for tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path


def tiny_experiment(manifests: dict, exp_dir: str | Path = "unused", **sections: dict) -> dict:
    """All four tasks on a 2-layer, 32-dim Conformer: seconds per epoch on the session corpus.

    Each keyword (`data`, `optim`, `train`, ...) updates that section of the defaults, or
    adds it (`specaugment=None` turns SpecAugment off).
    """
    cfg = {
        "exp_dir": str(exp_dir),
        "data": {"train": str(manifests["train"]), "dev": str(manifests["dev"]), "max_batch_seconds": 12.0,
                 "num_workers": 0, "cmvn_utterances": 20},
        "encoder": {"kind": "conformer", "input_dim": 80, "dim": 32, "layers": 2, "heads": 2,
                    "conv_kernel": 5, "dropout": 0.0, "max_chunk_frames": 4},
        "tasks": {
            "asr": {"kind": "ctc", "label": "text", "layer": -1, "vocab_size": 30},
            "phones": {"kind": "ctc", "label": "phones", "layer": 0, "weight": 0.3},
            "speaker": {"kind": "speaker", "layer": 0, "weight": 0.3},
            "vad": {"kind": "vad", "layer": 0, "weight": 0.3},
        },
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "train": {"epochs": 2, "log_every_steps": 1, "average_best": 2, "threads": 1},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(name), dict):
            cfg[name].update(values)
        else:
            cfg[name] = values
    return cfg
