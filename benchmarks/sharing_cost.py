"""Parameter and compute cost of the MTL sharing schemes on a recipe's model (docs/ablation.md).

Builds the recipe's model (default: the CPU demo, recipes/synthetic/conformer.yaml) four
ways: hard sharing at fixed layers (the recipe as written), `layer: learned` for asr and
phones, asr/phones task towers over the top `--tower-layers` layers (phones reads its
tower's top), and the same towers joined by cross-stitch units. For each it counts the
parameters, counts the floating-point operations of a full-context forward (features,
encoder, every head; eval mode, no gradient; torch's FlopCounterMode: matrix products,
convolutions and attention) per second of audio, and times that forward on a batch of random
audio, schemes interleaved round by round so that a shared
CPU's load changes hit them alike, and reports the fastest round (the one least disturbed by
other load) beside the median. Compute does not depend on the audio's content.

    python benchmarks/sharing_cost.py --labels exp/synthetic/all/labels.json --out sharing_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtspeech.config import load_yaml, merge
from mtspeech.experiment import build_model, experiment_from_dict

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "synthetic" / "conformer.yaml"


def schemes(tower_layers: int) -> dict[str, dict]:
    """scheme name → the config change that makes it (merged into the recipe)."""
    towers = {"tasks": ["asr", "phones"], "layers": tower_layers}
    return {
        "hard (fixed layers)": {},
        "learned layers (asr, phones)": {"tasks": {"asr": {"layer": "learned"}, "phones": {"layer": "learned"}}},
        f"towers asr/phones, top {tower_layers}": {"encoder": {"towers": towers},
                                                  "tasks": {"phones": {"layer": -1}}},
        f"towers + cross-stitch, top {tower_layers}": {"encoder": {"towers": dict(towers, cross_stitch=True)},
                                                       "tasks": {"phones": {"layer": -1}}},
    }


def label_spaces(recipe: dict, labels_json: str | None) -> dict:
    """Every task's label space: sizes from a training run's labels.json, else made-up ones of
    the synthetic corpus's size (39 phones, 28 speakers). Only the heads' sizes matter here."""
    if labels_json:
        raw = json.loads(Path(labels_json).read_text())
        return {name: ({"label": "text", "vocab_size": spec["vocab_size"]} if spec.get("label") == "text" else spec)
                for name, spec in raw.items()}
    out = {}
    for name, cfg in recipe["tasks"].items():
        if cfg["kind"] == "ctc" and cfg.get("label", "text") == "text":
            out[name] = {"label": "text", "vocab_size": cfg.get("vocab_size", 64)}
        elif cfg["kind"] == "ctc":
            out[name] = {"label": "phones", "phones": [f"p{i}" for i in range(39)]}
        elif cfg["kind"] == "speaker":
            out[name] = {"speakers": [f"s{i}" for i in range(28)]}
        else:
            out[name] = {}
    return out


def count(params) -> int:
    return sum(p.numel() for p in params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(RECIPE))
    ap.add_argument("--labels", help="a run's labels.json (head sizes); default: the synthetic corpus's sizes")
    ap.add_argument("--tower-layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="utterances per forward")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each utterance")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    recipe = load_yaml(args.recipe)
    labels = label_spaces(recipe, args.labels)
    models, rows = {}, {}
    for name, change in schemes(args.tower_layers).items():
        data = merge(recipe, change)
        data["exp_dir"] = "unused"
        torch.manual_seed(0)
        model = build_model(experiment_from_dict(data), labels).eval()
        models[name] = model
        tasks = count(model.tasks.parameters())
        rows[name] = {"params": count(model.parameters()), "encoder_params": count(model.encoder.parameters()),
                      "head_params": tasks, "times_s": []}

    rate = experiment_from_dict(dict(recipe, exp_dir="unused")).features.sample_rate
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(args.batch, int(args.seconds * rate), generator=g) * 0.1
    wav_lens = torch.full((args.batch,), wav.shape[1])
    audio_s = args.batch * args.seconds
    with torch.inference_mode():
        for name, model in models.items():  # exact, whatever the CPU's load
            with FlopCounterMode(display=False) as flops:
                model.task_logits(model.encode(wav, wav_lens))
            rows[name]["gflops_per_audio_s"] = flops.get_total_flops() / 1e9 / audio_s
        for _ in range(2):  # warm-up: allocator, kernels
            for model in models.values():
                model.task_logits(model.encode(wav, wav_lens))
        for _ in range(args.rounds):
            for name, model in models.items():
                t0 = time.perf_counter()
                model.task_logits(model.encode(wav, wav_lens))
                rows[name]["times_s"].append(time.perf_counter() - t0)
    base = rows[next(iter(rows))]
    for row in rows.values():
        row["ms_per_audio_s"] = 1000 * min(row["times_s"]) / audio_s
        row["median_ms_per_audio_s"] = 1000 * statistics.median(row["times_s"]) / audio_s
        row["params_vs_hard"] = row["params"] / base["params"]
    for row in rows.values():
        row["time_vs_hard"] = row["ms_per_audio_s"] / base["ms_per_audio_s"]
        row["flops_vs_hard"] = row["gflops_per_audio_s"] / base["gflops_per_audio_s"]

    print(f"{args.recipe}: batch {args.batch} x {args.seconds:g} s, {args.threads} threads, {args.rounds} rounds")
    print("| scheme | parameters | vs hard | forward GFLOP per s of audio | vs hard "
          "| forward ms per s of audio, fastest (median) | vs hard |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['params'] / 1e6:.3f} M | {row['params_vs_hard']:.2f}x | "
              f"{row['gflops_per_audio_s']:.3f} | {row['flops_vs_hard']:.2f}x | "
              f"{row['ms_per_audio_s']:.1f} ({row['median_ms_per_audio_s']:.1f}) | {row['time_vs_hard']:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps({"recipe": args.recipe, "batch": args.batch, "seconds": args.seconds,
                                              "threads": args.threads, "rounds": args.rounds, "schemes": rows},
                                             indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
