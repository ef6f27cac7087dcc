"""Cost and scale of the task-relatedness measurement (mtspeech/relatedness.py) on a trained model.

On the same training batches (train mode: SpecAugment, dropout), times a plain training
step (forward, weighted backward) and one relatedness measurement, and prints the measured
cosines and lookahead affinities at several lookahead learning rates, to choose
`train.relatedness_lookahead_lr` (an affinity should be well above float noise and still
close to the first-order estimate lr·g_j·g_i / L_i, i.e. about proportional to lr).

    python benchmarks/relatedness_cost.py --model exp/synthetic/all/final.pt \
        --manifest data/synthetic/train.jsonl --batches 5 --out relatedness_cost.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from mtspeech.checkpoint import load_model
from mtspeech.data.dataset import UtteranceDataset, collate_batch
from mtspeech.data.manifest import read_manifest
from mtspeech.data.sampler import DurationBatchSampler
from mtspeech.relatedness import RelatednessProbe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", required=True, help="training manifest the batches come from")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.1, 1.0], help="lookahead learning rates")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, exp, _ = load_model(args.model)
    model.train()
    utts = read_manifest(args.manifest)
    sampler = DurationBatchSampler([u.duration for u in utts], exp.data.max_batch_seconds, shuffle=True, seed=0)
    dataset = UtteranceDataset(utts, dict(model.tasks), train=True, speed_factors=None)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch)
    weights = {name: cfg.weight for name, cfg in exp.tasks.items()}
    probes = {lr: RelatednessProbe(model, lr) for lr in args.lrs}

    step_s, probe_s, values = [], [], {lr: [] for lr in args.lrs}
    for batch in itertools.islice((b for b in loader if b is not None), args.batches):
        t0 = time.perf_counter()
        losses, _, _ = model(batch.wav, batch.wav_lens, batch.targets)
        sum(weights[k] * v for k, v in losses.items()).backward()
        step_s.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        for lr, probe in probes.items():
            out = probe.measure(batch.wav, batch.wav_lens, batch.targets)
            probe_s.append(out.pop("relatedness/seconds"))
            values[lr].append(out)

    main_task = model.asr_task
    rows = {}
    for lr, outs in values.items():
        keys = sorted({k for o in outs for k in o})
        rows[lr] = {k: statistics.mean(o[k] for o in outs if k in o) for k in keys}
    result = {"model": args.model, "batches": args.batches, "threads": args.threads,
              "train_step_s": statistics.median(step_s), "measure_s": statistics.median(probe_s),
              "measure_over_step": statistics.median(probe_s) / statistics.median(step_s),
              "means_by_lookahead_lr": rows}
    print(f"training step (forward + backward): {result['train_step_s']:.3f} s; one measurement: "
          f"{result['measure_s']:.3f} s = {result['measure_over_step']:.1f} steps (medians over {args.batches} batches)")
    aux = [t for t in model.tasks if t != main_task]
    print("lookahead_lr | " + " | ".join(f"cos {t} | Z {t}->{main_task} | Z {main_task}->{t}" for t in aux))
    for lr, r in rows.items():
        cells = [f"{r.get(f'relatedness/{k}', float('nan')):+.4f}" for t in aux
                 for k in (f"cos/{t}", f"affinity/{t}/{main_task}", f"affinity/{main_task}/{t}")]
        print(f"{lr:g} | " + " | ".join(cells))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
