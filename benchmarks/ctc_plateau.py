"""How long CTC sits on its blank plateau, per training seed, for a grid run and variants of it.

An ASR-only CTC model first learns to emit blank everywhere (the training loss flattens near
the label unigram entropy) and only later learns where the labels are. How many updates that
takes varies a lot with the training seed, which made the ASR-only baseline of the ablation
grids unreliable (issue 30, item 5). This measures it: each arm is the grid's run config plus
overrides, trained for every seed until the loss leaves the plateau or `--max-updates`.

    python benchmarks/ctc_plateau.py --grid recipes/synthetic/grid_controls.yaml --variant asr_only \\
        --arm base --arm sortagrad:data.sorted_epochs=1 --seeds 0 1 2 --max-updates 2000 \\
        --out exp/ctc-plateau --json docs/results/ctc-plateau/asr-only.json

Escape: the first logged update at which the mean of the last 5 logged training losses of the
main task is below `--escape-loss` (default 3.0; the plateau of the demo corpus's 64-piece
vocabulary sits at 3.8-3.9, and a model past it falls below 3 within ~100 updates). A run that
has escaped is stopped there; raising `--max-updates` later continues a run from its last
epoch's `last.pt`. Runs train on one thread each (`--threads`), so two fit on 2 cores. The JSON keeps per run the escape update, the loss every
100 updates and the per-epoch dev CER; per arm the escapes of every seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mtspeech.ablation.grid import load_grid, run_config
from mtspeech.experiment import experiment_to_dict, load_experiment

WINDOW = 5  # logged losses averaged for the escape test


def parse_arm(text: str) -> tuple[str, list[str]]:
    """`name` or `name:key=value,key=value` → (name, ["key=value", ...])."""
    name, _, sets = text.partition(":")
    overrides = [s for s in sets.split(",") if s]
    if not name or any("=" not in s for s in overrides):
        raise argparse.ArgumentTypeError(f"--arm {text!r}: expected NAME or NAME:KEY=VALUE[,KEY=VALUE]")
    return name, overrides


def read_log(run_dir: Path, task: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(update, training loss) and (update, dev CER) pairs from the run's train_log.jsonl, one per
    update: a run stopped mid-epoch resumes from its last epoch's checkpoint and logs those
    updates again, and the later record is kept."""
    path = run_dir / "train_log.jsonl"
    losses, dev = {}, {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            if f"loss/{task}" in r:
                losses[r["step"]] = r[f"loss/{task}"]
            if f"dev/{task}/cer" in r:
                dev[r["step"]] = r[f"dev/{task}/cer"]
    return sorted(losses.items()), sorted(dev.items())


def escape_update(losses: list[tuple[int, float]], threshold: float) -> int | None:
    for i in range(WINDOW, len(losses) + 1):
        if sum(v for _, v in losses[i - WINDOW: i]) / WINDOW < threshold:
            return losses[i - 1][0]
    return None


def _done(run_dir: Path, task: str, threshold: float, max_updates: int | None) -> bool:
    """Escaped or past `max_updates`; with `max_updates` None (to the end): the run has ended."""
    if max_updates is None:
        return (run_dir / "stopping.json").is_file()
    losses, _ = read_log(run_dir, task)
    return escape_update(losses, threshold) is not None or bool(losses and losses[-1][0] >= max_updates)


def train_until_escape(config: Path, run_dir: Path, task: str, threshold: float, max_updates: int | None) -> None:
    """Run `mtspeech train` (it resumes from last.pt) until escape or `max_updates`, or with
    `max_updates` None until the trainer stops by itself (dev plateau or the epoch cap)."""
    if _done(run_dir, task, threshold, max_updates):
        return
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "mtspeech.cli", "train", "--config", str(config)]  # this venv's mtspeech
    with open(run_dir / "train.out", "a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                time.sleep(5)
                if max_updates is not None and _done(run_dir, task, threshold, max_updates):
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()


def summarize_run(run_dir: Path, task: str, threshold: float, max_updates: int) -> dict:
    losses, dev = read_log(run_dir, task)
    esc = escape_update(losses, threshold)
    stopping = run_dir / "stopping.json"
    if stopping.is_file():  # trained to the end: how it stopped and its best dev CER
        record = json.loads(stopping.read_text())
        cers = [e[f"{task}/cer"] for e in record["dev_curve"] if f"{task}/cer" in e]
        end = {"stopped_by": record["stopped_by"], "epochs": record["epochs"], "updates": record["updates"],
               "best_dev_cer": round(min(cers), 4) if cers else None}
    else:
        end = None
    return {"end": end,
        "escape_update": esc,
        "updates": losses[-1][0] if losses else 0,
        "stopped_by": "escape" if esc is not None else ("max_updates" if losses and losses[-1][0] >= max_updates
                                                         else "incomplete"),
        "loss_every_100": [[s, round(v, 3)] for s, v in losses if s % 100 == 0],
        "dev_cer": [[s, round(v, 4)] for s, v in dev],
    }


def end_spread(runs: dict) -> dict | None:
    """Mean and sample standard deviation over seeds of the best dev CER, when every run of the
    arm has trained to its end (the acceptance of issue 30 item 5 reads the standard deviation)."""
    ends = [r["end"] for r in runs.values()]
    if not ends or any(e is None or e["best_dev_cer"] is None for e in ends):
        return None
    cers = [e["best_dev_cer"] for e in ends]
    return {"per_seed": cers, "mean": round(statistics.fmean(cers), 4),
            "sd": round(statistics.stdev(cers), 4) if len(cers) > 1 else None,
            "stopped_by": [e["stopped_by"] for e in ends]}


def _loss_at(run: dict, update: int) -> str:
    at = dict((s, v) for s, v in run["loss_every_100"])
    return f"{at[update]:.2f}" if update in at else "-"


def render(summary: dict) -> str:
    """Per arm and seed: the update of escape (or "no" within the budget), the training loss at
    500-update marks, the dev CER after each of the first 8 epochs, and how a run trained to its
    end stopped. The logged loss of a head with intermediate layers is its combined loss, so
    across such arms compare the dev CER (of the top layer), not the loss."""
    cap = summary["max_updates"]
    marks = [u for u in (500, 1000, 1500, 2000) if u <= cap]
    head = ("arm", "seed", "escape at", *[f"loss@{u}" for u in marks], "dev CER after epochs 1-8", "end")
    rows = [head]
    for name, arm in summary["arms"].items():
        for seed, run in arm["runs"].items():
            esc, end = run["escape_update"], run.get("end")
            rows.append((name, seed.removeprefix("seed"),
                         str(esc) if esc is not None else f"no ({run['updates']} run)",
                         *[_loss_at(run, u) for u in marks],
                         " ".join(f"{c:.2f}" for _, c in run["dev_cer"][:8]) or "-",
                         (f"best dev CER {end['best_dev_cer']:.3f}, {end['stopped_by']} after {end['updates']}"
                          if end else "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for name, arm in summary["arms"].items():
        lines.append(f"{name}: {' '.join(arm['overrides']) or 'the grid run as it is'}")
        spread = arm.get("best_dev_cer")
        if spread:
            sd = f"{100 * spread['sd']:.1f}" if spread["sd"] is not None else "-"
            lines.append(f"  best dev CER over {len(spread['per_seed'])} seeds: mean {100 * spread['mean']:.1f} %, "
                         f"standard deviation {sd} points")
    lines += ["", f"escape: mean of {summary['window']} logged training losses below {summary['escape_loss']}; "
              f"runs stop at escape or {cap} updates unless trained to their end"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", required=True, help="ablation grid YAML whose run config is the starting point")
    ap.add_argument("--variant", required=True, help="the grid variant (e.g. asr_only)")
    ap.add_argument("--arm", action="append", type=parse_arm, required=True,
                    help="NAME[:KEY=VALUE,...]: overrides on top of the variant (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-updates", type=int, default=2000)
    ap.add_argument("--to-the-end", action="store_true",
                    help="train each run until the trainer stops (dev plateau or cap), not at escape")
    ap.add_argument("--escape-loss", type=float, default=3.0)
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs (resumable)")
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--summarize-only", action="store_true", help="read the runs, train nothing")
    args = ap.parse_args(argv)

    grid = load_grid(args.grid)
    if args.variant not in grid.variants:
        ap.error(f"--variant {args.variant!r} is not in {args.grid}: {sorted(grid.variants)}")
    arms = dict(args.arm)
    if len(arms) != len(args.arm):
        ap.error("two --arm share a name")
    summary = {"command": " ".join(["python", "benchmarks/ctc_plateau.py", *(argv if argv is not None else sys.argv[1:])]),
               "grid": str(args.grid), "variant": args.variant, "escape_loss": args.escape_loss,
               "window": WINDOW, "max_updates": args.max_updates, "arms": {}}
    for name, overrides in arms.items():
        runs = {}
        for seed in args.seeds:
            run_dir = args.out / name / f"seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            config = run_config(grid, args.variant, seed, run_dir)
            config_path = run_dir / "config.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            task = config.get("main_task") or "asr"
            # the arm's overrides go through the same dotted-key path as `mtspeech train --set`
            exp = load_experiment(str(config_path), [*overrides, f"train.threads={args.threads}"])
            config_path.write_text(yaml.safe_dump(experiment_to_dict(exp), sort_keys=False))
            if not args.summarize_only:
                train_until_escape(config_path, run_dir, task, args.escape_loss,
                                   None if args.to_the_end else args.max_updates)
            runs[f"seed{seed}"] = summarize_run(run_dir, task, args.escape_loss, args.max_updates)
            print(f"{name} seed {seed}: escape at {runs[f'seed{seed}']['escape_update']}", flush=True)
        escapes = [r["escape_update"] for r in runs.values()]
        summary["arms"][name] = {"overrides": overrides, "escapes": escapes,
                                 "escaped": sum(e is not None for e in escapes), "seeds": len(escapes),
                                 "runs": runs, "best_dev_cer": end_spread(runs)}
    train = grid.recipe.get("data", {}).get("train")
    for path in ([train] if isinstance(train, str) else train or []):
        if Path(path).is_file():
            summary.setdefault("train_manifests", {})[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json}")
    print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
