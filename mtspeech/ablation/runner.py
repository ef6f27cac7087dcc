"""Running a grid's runs: one run in a worker process, a grid as local subprocesses (`--jobs`),
resuming what an interrupted grid left (SLURM: `mtspeech.ablation.slurm`)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mtspeech.ablation.grid import Grid, Run, plan_runs
from mtspeech.ablation.report import build_report

log = logging.getLogger(__name__)


def run_one(run_dir: str | Path, threads: int | None = None) -> None:
    """Train (or resume) and evaluate one planned run; what a grid worker process does.

    Under torchrun every rank trains; only rank 0 evaluates.
    """
    from mtspeech.config import apply_overrides
    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.evaluation.evaluate import evaluate
    from mtspeech.experiment import experiment_from_dict
    from mtspeech.train import train

    run_dir = Path(run_dir)
    spec = json.loads((run_dir / "run.json").read_text())
    config = spec["config"]
    if threads:
        config = apply_overrides(config, [f"train.threads={threads}"])
    t0 = time.time()
    timing_path = run_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    if not (run_dir / "final.pt").is_file():
        train(experiment_from_dict(config))
        timing["train_s"] = timing.get("train_s", 0.0) + time.time() - t0
    if int(os.environ.get("RANK", "0")) != 0:
        return
    t1 = time.time()
    # the grid's `evaluate:` block: DecodingConfig fields (decoder, beam_size, lm, ...) and
    # evaluate's other keyword options (chunk_frames, ...)
    decoding, options = DecodingConfig.from_options(spec["evaluate"])
    for split, manifest in spec["splits"].items():  # dev; test only when planned with --final
        out = run_dir / "eval" / split
        if not (out / "results.json").is_file():
            evaluate(run_dir / "final.pt", manifest, out, decoding, threads=threads, **options)
    timing["eval_s"] = timing.get("eval_s", 0.0) + time.time() - t1
    timing_path.write_text(json.dumps(timing))


class _Events:
    """Append-only `OUT/events.jsonl`: what the grid did to each run, and when."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()

    def __call__(self, run: Run, event: str, **extra) -> None:
        rec = {"time": time.time(), "run": run.name, "event": event, **extra}
        with self.lock, open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def pending_runs(grid: Grid, runs: list[Run], events: _Events) -> list[tuple[Run, str]]:
    """(run, state) of every run still to do; done runs are logged as skipped. Both launchers
    (this module's and `mtspeech.ablation.slurm`'s) use it, so they skip the same runs."""
    todo = []
    for run in runs:
        state = run.state(grid.splits)
        if state == "done":
            events(run, "skip")
        else:
            todo.append((run, state))
    return todo


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_grid(
    grid: Grid,
    out: str | Path,
    jobs: int = 1,
    threads: int | None = None,
    in_process: bool | None = None,
) -> dict:
    """Train and evaluate every unfinished run of `grid` under `out`, then write the report.

    jobs: runs at once; threads: torch threads per run (default cores // jobs);
    in_process: run in this process instead of subprocesses (default: when jobs == 1).
    Returns the report dict (also `out/results.json`); failed runs are listed in it and
    left out of the statistics.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs)
    cores = cpu_cores()
    threads = threads or max(1, cores // jobs)
    if jobs * threads > cores:
        log.warning("%d jobs × %d threads exceed the %d cores available", jobs, threads, cores)
    in_process = jobs == 1 if in_process is None else in_process
    runs = plan_runs(grid, out)
    events = _Events(out / "events.jsonl")
    todo = pending_runs(grid, runs, events)
    log.info("%d runs: %d done, %d to do (%d jobs × %d threads)", len(runs), len(runs) - len(todo),
             len(todo), jobs, threads)
    failures: dict[str, str] = {}

    def execute(item) -> None:
        run, state = item
        events(run, state)
        t0 = time.time()
        try:
            if in_process:
                run_one(run.dir, threads)
            else:
                _run_subprocess(run, threads)
        except Exception as e:  # one failed run must not stop the grid
            log.error("run %s failed: %s", run.name, e)
            failures[run.name] = str(e)
            events(run, "failed", error=str(e))
            return
        events(run, "finished", seconds=time.time() - t0)
        log.info("run %s finished in %.0f s", run.name, time.time() - t0)

    from tqdm import tqdm

    with tqdm(total=len(todo), desc="ablation runs", unit="run", dynamic_ncols=True) as bar:
        if jobs == 1 or len(todo) <= 1:
            for item in todo:
                execute(item)
                bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for _ in pool.map(execute, todo):
                    bar.update(1)
    return build_report(grid, out, runs, failed=failures)


def worker_command(run: Run, threads: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "mtspeech.ablation", "--run", str(run.dir)]
    return cmd + (["--threads", str(threads)] if threads else [])


def _run_subprocess(run: Run, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(run.dir / "run.log", "a") as logf:
        proc = subprocess.run(worker_command(run, threads), stdout=logf, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited with status {proc.returncode}; see {run.dir / 'run.log'}")
