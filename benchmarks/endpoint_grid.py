"""Endpointing across an ablation grid: `endpoint_latency.py` on every trained run, summarised per variant.

An ablation grid (`mtspeech ablate`) scores each run's heads frame by frame; what a VAD head
is for in the server, closing an utterance after its last word and not inside a pause, needs
the streaming endpointer. This runs `endpoint_latency.py` with the same arguments on each
run's `final.pt` under `<grid-out>/runs/<variant>/seed<N>/` and reports, per variant, the mean
± sample std over seeds of: items the VAD head endpointed (and blank-only, the baseline each
run measures on its own model), early cuts (premature) of both and those inside an inserted
pause, the VAD head's WER and mean delay, and the share of tail frames it scored as speech in
the items it left open. Each run's full result is kept in the JSON (`runs`).

    python benchmarks/endpoint_grid.py --grid-out exp/synthetic/grid-vad-pad --out ep_grid.json -- \\
        --manifest data/synthetic/test-snr10.jsonl --tail background --pauses 0.4 0.8 --limit 60

Everything after `--` goes to endpoint_latency.py (all but --model and --out).
`--summarise ep_grid.json` prints a saved result's table again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import endpoint_latency  # noqa: E402
from _cli import emit  # noqa: E402

COLUMNS = ("vad endpointed", "blank endpointed", "vad premature", "blank premature", "vad cut in pause",
           "blank cut in pause", "vad WER", "vad delay (s)", "open-tail speech")


def grid_runs(grid_out: Path) -> list[tuple[str, int, Path]]:
    """(variant, seed, final.pt) of every trained run of the grid, sorted."""
    runs = []
    for ckpt in sorted(grid_out.glob("runs/*/seed*/final.pt")):
        seed_dir = ckpt.parent
        runs.append((seed_dir.parent.name, int(seed_dir.name.removeprefix("seed")), ckpt))
    return runs


def run_numbers(result: dict) -> dict:
    """The per-run numbers the table summarises (None where a run has none)."""
    vad, blank = result["modes"]["vad"], result["modes"]["blank"]
    open_tail = vad.get("tail", {}).get("open", {}).get("speech_frac", {})
    return {
        "vad endpointed": vad["endpointed"], "blank endpointed": blank["endpointed"],
        "vad premature": vad["premature"], "blank premature": blank["premature"],
        "vad cut in pause": vad.get("cut_in_pause"), "blank cut in pause": blank.get("cut_in_pause"),
        "vad WER": vad["wer"], "vad delay (s)": vad["delay_s"]["mean"],
        "open-tail speech": open_tail.get("mean"),
    }


def summarise(rows: list[dict]) -> dict:
    """Column → {mean, std, n} over the runs of one variant (None values left out)."""
    out = {}
    for col in COLUMNS:
        values = [r[col] for r in rows if r[col] is not None]
        out[col] = {"n": len(values), "mean": statistics.fmean(values) if values else None,
                    "std": statistics.stdev(values) if len(values) > 1 else None}
    return out


def run(grid_out: Path, bench_args: list[str]) -> dict:
    runs = grid_runs(grid_out)
    if not runs:
        raise SystemExit(f"no trained run (runs/*/seed*/final.pt) under {grid_out}")
    per_run = []
    for variant, seed, ckpt in runs:
        ap = argparse.ArgumentParser()
        endpoint_latency.add_arguments(ap)
        args = ap.parse_args([*bench_args, "--model", str(ckpt)])
        print(f"{variant}/seed{seed}: {ckpt}", flush=True)
        result = endpoint_latency.run(args)
        per_run.append({"variant": variant, "seed": seed, "model": str(ckpt), "result": result})
    return with_summary({"benchmark": "endpoint_grid", "grid_out": str(grid_out), "endpoint_args": bench_args,
                         "runs": per_run})


def with_summary(result: dict) -> dict:
    """`result` with each run's numbers and each variant's summary computed from the runs'
    endpoint_latency results (so a JSON saved before a column was added gets it too)."""
    runs = [{**r, "numbers": run_numbers(r["result"])} for r in result["runs"]]
    by_variant = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r["numbers"])
    return {**result, "runs": runs, "variants": {v: summarise(rows) for v, rows in by_variant.items()}}


def _cell(s: dict) -> str:
    if s["mean"] is None:
        return "-"
    std = "" if s["std"] is None else f" ± {s['std']:.2f}"
    return f"{s['mean']:.2f}{std}"


def render(result: dict) -> str:
    lines = [f"grid {result['grid_out']}; endpoint_latency.py {' '.join(result['endpoint_args'])}",
             "| variant | runs | " + " | ".join(COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for variant, s in result["variants"].items():
        n = max(c["n"] for c in s.values())
        lines.append(f"| {variant} | {n} | " + " | ".join(_cell(s[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    own, bench_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--grid-out", type=Path, help="the grid's --out folder")
    src.add_argument("--summarise", type=Path, metavar="JSON",
                     help="print the table of a saved --out again (recomputed from its runs)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(own)
    if args.summarise:
        return emit(with_summary(json.loads(args.summarise.read_text())), render, args.out)
    if any(a in ("--model", "--random-model", "--out") for a in bench_args):
        raise SystemExit("pass --out before `--`; the models are the grid's runs")
    return emit(run(args.grid_out, bench_args), render, args.out)


if __name__ == "__main__":
    main()
