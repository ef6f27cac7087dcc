"""A tiny, randomly initialised mtspeech checkpoint, so the benchmarks run without training.

The file is a real checkpoint (`config`, `labels` with an embedded sentencepiece model,
`model` weights), so `mtspeech serve --model` and `mtspeech.checkpoint.load_model` read it
exactly like a trained one. It has the ASR (CTC on text) task and the VAD head - the two
heads streaming uses. Its transcripts are nonsense; latency, throughput and CPU figures
measured with it are those of a 2-layer, 32-dim encoder, far cheaper than a real model.

(The server tests build a recognizer in memory, `tests/serve/serve_helpers.py`; a benchmark
that starts `mtspeech serve` in a subprocess needs a file, hence this module.)
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

_WORDS = ("THE OF AND TO A IN HE THAT WAS IT HIS HAD WITH AS FOR YOU BUT SHE ON HER NOT BE AT "
          "BY WHICH HAVE ALL FROM THEY THIS WERE SO ONE SAID NO WOULD WHAT MY MAN THERE LITTLE "
          "DON'T FATHER'S CHAPTER QUIXOTE SQUIRE JOURNEY EVENING GREEN LIGHT").split()


def tiny_config(exp_dir: str | Path, dim: int = 32, layers: int = 2, vocab_size: int = 40,
                speaker: bool = False, phones: bool = False) -> dict:
    """The experiment dict of the tiny model (ASR CTC + VAD; `speaker`: and a speaker head on
    layer 0, as the demo's; `phones`: and a phone CTC head on layer 0)."""
    config = {
        "exp_dir": str(exp_dir),
        "data": {"train": "unused.jsonl", "num_workers": 0, "speed_perturb": None},
        "encoder": {"kind": "conformer", "input_dim": 80, "dim": dim, "layers": layers, "heads": 2,
                    "conv_kernel": 5, "dropout": 0.0, "dynamic_chunk": False, "max_chunk_frames": 8},
        "specaugment": None,
        "tasks": {
            "asr": {"kind": "ctc", "label": "text", "layer": -1, "vocab_size": vocab_size, "dropout": 0.0},
            "vad": {"kind": "vad", "layer": 0},
        },
    }
    if speaker:
        config["tasks"]["speaker"] = {"kind": "speaker", "layer": 0}
    if phones:
        config["tasks"]["phones"] = {"kind": "ctc", "label": "phones", "layer": 0, "dropout": 0.0}
    return config


def build_random_checkpoint(path: str | Path, seed: int = 0, dim: int = 32, layers: int = 2,
                            speaker: bool = False, phones: bool = False) -> Path:
    """Write a randomly initialised tiny checkpoint to `path` (`speaker`: with a speaker head
    over 4 made-up training speakers; `phones`: with a phone head over CMUdict's 39 phones);
    returns the path."""
    from mtspeech.data.lexicon import PHONES
    from mtspeech.checkpoint import load_model, save_atomic
    from mtspeech.experiment import build_model, experiment_from_dict, experiment_to_dict, fit_labels

    path = Path(path)
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) for _ in range(60)]
    with tempfile.TemporaryDirectory(prefix="mtspeech_tiny_") as tmp:
        exp = experiment_from_dict(tiny_config(tmp, dim, layers, speaker=speaker, phones=phones))
        utts = [SimpleNamespace(text=t, speaker=f"spk{i % 4}", phones=list(PHONES)) for i, t in enumerate(texts)]
        labels = fit_labels(exp, utts)  # trains sentencepiece in tmp
        torch.manual_seed(seed)
        model = build_model(exp, labels)
        # Log-mel of speech at typical levels is around -6 +- 4: normalise roughly like a fitted CMVN.
        model.cmvn.set_stats(torch.full((80,), -6.0), torch.full((80,), 4.0))
        save_atomic({"config": experiment_to_dict(exp), "labels": labels, "model": model.state_dict(),
                     "step": 0, "epoch": 0, "random_init": True}, path)
    load_model(path)  # fail here, not in a server subprocess, if the file does not load
    return path


def all_speech_vad(path: str | Path) -> Path:
    """Raise the checkpoint's random VAD head's output bias so every frame is speech: a random
    head calls little or nothing speech, and speaker turns pool speech frames only, so this is
    the most speaker-turn work a second of audio can cause (a window every `window_frames`
    frames). Rewrites `path`; returns it."""
    ckpt = torch.load(path, weights_only=False)
    key = sorted(k for k in ckpt["model"] if k.startswith("tasks.vad.") and k.endswith(".bias"))[-1]
    ckpt["model"][key] = ckpt["model"][key] + 30.0
    torch.save(ckpt, path)
    return Path(path)


if __name__ == "__main__":
    import sys

    print(build_random_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "tiny_random.pt"))
