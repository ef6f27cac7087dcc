"""`mtspeech ablate` and the grid worker `python -m mtspeech.ablation --run RUN_DIR`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from mtspeech.ablation.grid import load_grid, plan_runs
from mtspeech.ablation.report import build_report, reaggregate
from mtspeech.ablation.runner import run_grid, run_one
from mtspeech.config import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mtspeech ablate`."""
    parser.add_argument("--grid", help="grid YAML (e.g. recipes/synthetic/ablation.yaml); not needed with --from-results")
    parser.add_argument("--out", default=None, help="output folder (default: the grid's `out`)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (subprocesses; local launcher)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores // jobs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the grid's)")
    parser.add_argument("--variants", nargs="+", default=None, help="variants to run (default: the grid's selection)")
    parser.add_argument("--final", action="store_true",
                        help="also score the grid's test splits (once, at the end: every decision reads dev)")
    parser.add_argument("--report-only", action="store_true", help="only aggregate finished runs")
    parser.add_argument("--from-results", type=Path, default=None, metavar="RESULTS_JSON",
                        help="with --report-only: re-report a committed results.json whose runs are gone "
                             "(writes report.md, results.json and plots into --out)")
    parser.add_argument("--baseline", default=None, help="compare against this variant instead of the grid's baseline")
    parser.add_argument("--print-commands", action="store_true",
                        help="plan the runs and print one training command per unfinished run (for a cluster)")
    from mtspeech.ablation import slurm  # --launcher and the SLURM options live with their code

    slurm.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run `mtspeech ablate`; returns 0, or 1 when a run failed, 2 on a bad grid."""
    try:
        if args.from_results:
            if not args.report_only:
                raise ConfigError("--from-results goes with --report-only")
            out = Path(args.out or args.from_results.parent)
            reaggregate(args.from_results, out, baseline=args.baseline)
            log.info("report: %s", out / "report.md")
            return 0
        if not args.grid:
            raise ConfigError("--grid is required (or --report-only --from-results RESULTS_JSON)")
        grid = load_grid(args.grid, seeds=args.seeds, variants=args.variants, final=args.final)
        if args.baseline:
            if args.baseline not in grid.variants:
                raise ConfigError(f"--baseline {args.baseline!r}: not a variant of {args.grid} ({grid.variants})")
            grid = dataclasses.replace(grid, baseline=args.baseline)
        out = args.out or grid.out
        if not out:
            raise ConfigError("no output folder: pass --out or set `out:` in the grid")
        out = Path(out)
        if args.final:
            record_final(out, grid)
        if args.print_commands:
            for run in plan_runs(grid, out):
                if run.state(grid.splits) != "done":
                    print(f"torchrun --nproc_per_node=N -m mtspeech.ablation --run {run.dir}")
            return 0
        if args.report_only:
            report = build_report(grid, out)
        elif args.launcher == "slurm":
            from mtspeech.ablation.slurm import options_from_args, run_grid_submitit

            report = run_grid_submitit(grid, out, options_from_args(args), threads=args.threads)
        else:
            report = run_grid(grid, out, jobs=args.jobs, threads=args.threads)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    log.info("report: %s", out / "report.md")
    return 1 if report.get("failed") else 0


def record_final(out: Path, grid) -> None:
    """`OUT/final.json`: when the test splits were first scored. Scoring them again after a
    change is tuning on test, so a second `--final` is allowed but said out loud."""
    import json
    import time

    path = out / "final.json"
    if path.is_file():
        first = json.loads(path.read_text())
        log.warning("the test splits %s of %s were first scored at %s; decisions since then must not read them",
                    first["test_splits"], out, first["first_scored"])
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"first_scored": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "test_splits": sorted(grid.test)}, indent=1))


def _worker_main(argv: list[str] | None = None) -> int:
    """`python -m mtspeech.ablation --run RUN_DIR [--threads N]`: train + evaluate one planned run."""
    p = argparse.ArgumentParser(prog="python -m mtspeech.ablation", description=_worker_main.__doc__)
    p.add_argument("--run", required=True, help="a run folder planned by the grid (holds run.json)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    run_one(args.run, args.threads)
    return 0
