"""Choose `mtspeech adapt`'s step size per parameter set on a dev split of new voices.

For every set and every step size of the grid, `benchmarks/adaptation.py`'s own loop adapts
each voice of the manifest to k of its utterances (every k, every selection seed) and scores
the voice's other utterances; the voices and the unadapted model's errors are loaded once.
The chosen step size of a set is the one with the lowest CER averaged over the k values (each
k weighs the same; a tie goes to the smaller step), and per k the best is listed beside it, so
a page can show whether one step size serves every k. Run again with --out naming an earlier
result of the same voices and settings, it keeps that result's step sizes and adds the new
ones (a grid extended without re-running it). Only dev voices may be given: the choice
is what `mtspeech/adaptation/command.py`'s defaults are, and test splits are scored with them
once, afterwards (benchmarks/adaptation.py).

    python benchmarks/adaptation_tuning.py --model exp/synthetic/all/final.pt \\
        --manifest data-adapt/synthetic/adapt-dev.jsonl \\
        --grid layer-norms=3e-4,1e-3,3e-3 --voices 4 --threads 1 \\
        --out docs/results/adaptation/adapt-dev-tuning.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _cli import run_main
from adaptation import adapt_voices, add_run_arguments, load_voices, summarize

from mtspeech.adaptation.command import load_base
from mtspeech.adaptation.param_sets import AdaptationError, ParamSet, ParamSetConfig


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    """["layer-norms=1e-4,3e-4", ...] → {"layer-norms": [1e-4, 3e-4], ...} (each list sorted)."""
    grid = {}
    for item in items:
        kind, sep, values = item.partition("=")
        if not sep or not values:
            raise AdaptationError(f"--grid {item!r}: write SET=LR,LR,... (e.g. layer-norms=1e-4,3e-4)")
        ParamSetConfig(kind)  # an unknown set is refused here, with the known ones named
        try:
            grid[kind] = sorted(float(v) for v in values.split(","))
        except ValueError:
            raise AdaptationError(f"--grid {item!r}: step sizes must be numbers") from None
    return grid


def choose(by_lr: dict[str, dict], ks: list[int]) -> dict:
    """The step size (a key of `by_lr`: lr → summarize()'s fine-tune results) with the lowest
    mean CER over `ks`, and the best one per k; ties go to the smaller step."""
    def mean_cer(lr: str) -> float:
        return sum(by_lr[lr][str(k)]["cer"] for k in ks) / len(ks)

    order = sorted(by_lr, key=float)
    best = min(order, key=mean_cer)  # min keeps the first (smallest) of equal values
    per_k = {str(k): min(order, key=lambda lr, k=k: by_lr[lr][str(k)]["cer"]) for k in ks}
    return {"lr": float(best), "mean_cer": mean_cer(best), "best_lr_per_k": {k: float(v) for k, v in per_k.items()}}


def _earlier(out: str | None, settings: dict) -> dict | None:
    """The JSON at `out` when it was measured on the same model, voices, k, seeds, steps and
    threads as `settings` (its step sizes can be kept), else None."""
    if not out or not Path(out).is_file():
        return None
    earlier = json.loads(Path(out).read_text(encoding="utf-8"))
    keys = ("model", "manifest", "voices", "ks", "seeds", "steps", "threads")
    return earlier if all(earlier.get(key) == settings[key] for key in keys) else None


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    grid = parse_grid(args.grid)
    _, model = load_base(args.model)
    t0 = time.perf_counter()
    voices = load_voices(model, Path(args.manifest), args.voices)
    result = {"model": str(args.model), "manifest": str(args.manifest), "voices": sorted(voices.by_voice),
              "ks": args.ks, "seeds": args.seeds, "steps": args.steps, "threads": args.threads,
              "grid": {}, "none": None, "sets": {}}
    earlier = _earlier(args.out, result)
    if earlier:  # extend an earlier grid on the same voices and settings: its step sizes are not re-run
        result.update(none=earlier["none"], sets=earlier["sets"])
        measured = {kind: [float(lr) for lr in entry["by_lr"]] for kind, entry in earlier["sets"].items()}
        grid = {kind: sorted({*measured.get(kind, []), *grid.get(kind, [])}) for kind in {**measured, **grid}}
    result["grid"] = grid
    for kind, lrs in grid.items():
        pset = ParamSet(model, ParamSetConfig(kind))
        by_lr = result["sets"].get(kind, {}).get("by_lr", {})
        for lr in lrs:
            if str(lr) in by_lr:
                continue
            runs, _ = adapt_voices(model, pset, voices, args.ks, args.seeds, args.steps, lr)
            summary = summarize(runs, ["none", "fine-tune"], args.ks, args.seeds, args.resamples)
            result["none"] = summary["none"]
            by_lr[str(lr)] = summary["fine-tune"]
            by_lr = dict(sorted(by_lr.items(), key=lambda item: float(item[0])))
            result["sets"][kind] = {"set": pset.cfg.as_dict(), "by_lr": by_lr, "chosen": choose(by_lr, args.ks)}
            if args.out:  # a long grid on shared cores: what is done so far survives an interruption
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(result | {"unfinished": True}, indent=1))
    return result | {"seconds": (earlier or {}).get("seconds", 0.0) + time.perf_counter() - t0}


def render(result: dict) -> str:
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    ks = [str(k) for k in result["ks"]]
    lines = [f"step sizes chosen on {result['manifest']} ({len(result['voices'])} voices, seeds {result['seeds']}, "
             f"{result['steps']} Adam steps): CER on each voice's other utterances, [95 % interval over voices]", "",
             "| set | step size | " + " | ".join(f"k = {k}: CER, Δ vs none" for k in ks) + " | mean CER |",
             "|---|---|" + "---|" * len(ks) + "---|",
             "| none | - | " + " | ".join(f"{fmt(result['none'][k]['cer'])}" for k in ks) + " | "
             f"{fmt(sum(result['none'][k]['cer'] for k in ks) / len(ks))} |"]
    for kind, entry in result["sets"].items():
        chosen = entry["chosen"]["lr"]
        for lr, by_k in entry["by_lr"].items():
            mark = " (chosen)" if float(lr) == chosen else ""
            cells = [f"{fmt(by_k[k]['cer'])}, {by_k[k]['delta_vs_none']:+.3f} [{by_k[k]['delta_ci_low']:+.3f}, "
                     f"{by_k[k]['delta_ci_high']:+.3f}]" for k in ks]
            mean = sum(by_k[k]["cer"] for k in ks) / len(ks)
            lines.append(f"| {kind} | {float(lr):g}{mark} | " + " | ".join(cells) + f" | {fmt(mean)} |")
    lines.append("")
    for kind, entry in result["sets"].items():
        per_k = ", ".join(f"k = {k}: {v:g}" for k, v in entry["chosen"]["best_lr_per_k"].items())
        lines.append(f"{kind}: chosen {entry['chosen']['lr']:g} (lowest mean CER over k); best per k: {per_k}")
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="trained checkpoint (final.pt)")
    ap.add_argument("--manifest", required=True, help="a dev split of new voices (adapt-dev.jsonl), never a test split")
    ap.add_argument("--grid", nargs="+", required=True, metavar="SET=LR,LR,...", help="step sizes to try per set")
    add_run_arguments(ap, seeds=[0])


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv, usage_errors=(AdaptationError,))


if __name__ == "__main__":
    main()
