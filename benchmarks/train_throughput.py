"""Training throughput: seconds of audio trained per second of wall time.

Two numbers from the same run, on the same batches:
  * pipeline  — the real Trainer loop (DataLoader workers, speed perturbation, features,
                every task, loss weighting, clipping, optimizer step);
  * bare      — the model's forward/backward/step on those batches already in memory.
The ratio pipeline/bare shows the data-loading and bookkeeping overhead (1.0 = none).

    python benchmarks/train_throughput.py --config recipes/synthetic/conformer.yaml --steps 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time

import torch

from mtspeech.experiment import load_experiment
from mtspeech.train import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="recipes/synthetic/conformer.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=20, help="batches timed in each mode")
    ap.add_argument("--warmup", type=int, default=3, help="batches run before timing")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        exp = load_experiment(args.config, [*args.overrides, f"exp_dir={tmp}", "train.average_best=0"])
        trainer = Trainer(exp)
        trainer.model.train()
        trainer.sampler.set_epoch(0)
        loader = trainer._loader(trainer.train_utts, trainer.sampler, train=True)
        n = args.warmup + args.steps

        def step(batch) -> None:
            losses, _, _ = trainer.model(batch.wav, batch.wav_lens, batch.targets)
            losses = {k: v for k, v in losses.items() if batch.targets[k].present.any()}
            trainer.weighting.backward(losses, trainer.model.shared_parameters(), trainer.step)
            trainer._optimizer_step()

        # Pipeline: loader → device → step, timed after warm-up; the batches are kept.
        batches, audio_s, t0 = [], 0.0, None
        for i, batch in enumerate(itertools.islice(loader, n)):
            if i == args.warmup:
                t0 = time.perf_counter()
            batch = batch.to(trainer.rt.device)
            step(batch)
            if i >= args.warmup:
                batches.append(batch)
                audio_s += float(batch.wav_lens.sum()) / exp.features.sample_rate
        pipeline_s = time.perf_counter() - t0

        # Bare: the same batches, already loaded.
        t0 = time.perf_counter()
        for batch in batches:
            step(batch)
        bare_s = time.perf_counter() - t0

    result = {
        "device": str(trainer.rt.device),
        "threads": torch.get_num_threads(),
        "batches": len(batches),
        "audio_seconds": round(audio_s, 1),
        "pipeline_audio_s_per_s": round(audio_s / pipeline_s, 2),
        "bare_audio_s_per_s": round(audio_s / bare_s, 2),
        "pipeline_over_bare": round(bare_s / pipeline_s, 3),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
