"""Run an ablation grid on SLURM through submitit: one job per unfinished run, then the report.

    mtspeech ablate --grid G.yaml --launcher slurm --slurm-partition gpu \\
        --slurm-gpus-per-node 1 --slurm-cpus-per-task 8 --slurm-time-min 240 \\
        [--slurm-arg account=myproj --slurm-arg qos=normal]

Runs are planned and skipped exactly as by the local launcher (`mtspeech.ablation.runner`); every
run still to do becomes one job (one task: `run_one` on its run folder, logs and submitit's
pickles under `OUT/submitit/<job id>/`). The command stays in the foreground, polls the jobs
behind a progress bar and writes the same report as the local launcher when they have all
ended. A failed job is listed in the report with its log path; the other runs still count.
A job that SLURM stops at its time limit or preempts is requeued by submitit and resumes
from the run's `last.pt`. Ctrl-C cancels the jobs still queued or running.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from mtspeech.ablation.grid import Grid, Run, plan_runs
from mtspeech.ablation.report import build_report
from mtspeech.ablation.runner import _Events, pending_runs, run_one
from mtspeech.config import ConfigError

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class SlurmOptions:
    """What each run's job asks SLURM for; None leaves the cluster's default.

    extra: `sbatch --KEY=VALUE` pairs for anything without its own option (account, qos,
    constraint, mem, ...), passed as submitit's `slurm_additional_parameters`.
    poll_s: seconds between two looks at the jobs.
    """

    partition: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    time_min: int | None = None
    extra: tuple[tuple[str, str], ...] = ()
    poll_s: float = 15.0

    def executor_parameters(self) -> dict:
        """Keyword arguments of `submitit.AutoExecutor.update_parameters` (generic names,
        `slurm_`-prefixed ones for SLURM only, so the local executor of the tests ignores them)."""
        params: dict = {"nodes": 1, "tasks_per_node": 1, "stderr_to_stdout": True}
        if self.time_min is not None:
            params["timeout_min"] = self.time_min
        if self.gpus_per_node is not None:
            params["gpus_per_node"] = self.gpus_per_node
        if self.cpus_per_task is not None:
            params["cpus_per_task"] = self.cpus_per_task
        if self.partition is not None:
            params["slurm_partition"] = self.partition
        if self.extra:
            params["slurm_additional_parameters"] = dict(self.extra)
        return params


def parse_slurm_args(pairs: list[str] | None) -> tuple[tuple[str, str], ...]:
    """`["account=proj", "qos=high"]` → `(("account", "proj"), ("qos", "high"))`."""
    out = []
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or key.strip().startswith("-"):
            raise ConfigError(f"--slurm-arg {pair!r}: expected KEY=VALUE without dashes, e.g. account=myproj")
        out.append((key.strip(), value))
    return tuple(out)


class RunJob(submitit.helpers.Checkpointable):
    """One job's work: `run_one` on a run folder, from the submitting folder (grid paths are
    relative to it). Checkpointable, so a job stopped at its time limit or preempted is
    requeued with the same arguments, and `run_one` resumes from the run's last.pt."""

    def __call__(self, run_dir: str, threads: int | None, cwd: str) -> str:
        os.chdir(cwd)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        run_one(run_dir, threads)
        return run_dir


def _reason(error: BaseException) -> str:
    """The line of a job's error that says what went wrong (the trace's last exception line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line)]
    return (raised or lines or [type(error).__name__])[-1]


def run_grid_submitit(grid: Grid, out: str | Path, options: SlurmOptions, threads: int | None = None,
                      cluster: str = "slurm") -> dict:
    """Submit every unfinished run of `grid` under `out` as one job, wait, write the report.

    threads: torch threads per run (default: `options.cpus_per_task`, else the config's);
    cluster: submitit's executor, "slurm" (or "local", for tests and a single machine).
    Returns the report dict of `build_report`; failed runs are in its `failed`, each with
    the path of its job's log.
    """
    from tqdm import tqdm

    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if cluster == "slurm" and missing:
        raise ConfigError(f"--launcher slurm needs SLURM's {' and '.join(missing)} on PATH (run it on a "
                          "login node), or use --launcher local")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(grid, out)
    events = _Events(out / "events.jsonl")
    todo = pending_runs(grid, runs, events)
    log.info("%d runs: %d done, %d to submit to %s", len(runs), len(runs) - len(todo), len(todo), cluster)
    threads = threads or options.cpus_per_task
    failures: dict[str, str] = {}
    if todo:
        executor = submitit.AutoExecutor(folder=out / "submitit" / "%j", cluster=cluster)
        jobs: dict[Run, object] = {}
        for run, state in todo:
            executor.update_parameters(**options.executor_parameters(), name=f"ablate-{run.variant}-seed{run.seed}")
            job = executor.submit(RunJob(), str(run.dir.resolve()), threads, os.getcwd())
            jobs[run] = job
            events(run, state, launcher=cluster, job_id=str(job.job_id), log=str(job.paths.stdout))
            log.info("run %s: job %s (log %s)", run.name, job.job_id, job.paths.stdout)
        failures = _wait(jobs, events, options.poll_s, tqdm)
    return build_report(grid, out, runs, failed=failures)


def _wait(jobs: dict, events: _Events, poll_s: float, tqdm) -> dict[str, str]:
    """Poll until every job has ended; returns run name → "reason; log: PATH" for failures."""
    failures: dict[str, str] = {}
    waiting = dict(jobs)
    started = time.time()
    try:
        with tqdm(total=len(jobs), desc="ablation jobs", unit="run", dynamic_ncols=True) as bar:
            while waiting:
                for run, job in list(waiting.items()):
                    if not job.done():
                        continue
                    del waiting[run]
                    bar.update(1)
                    error = job.exception()
                    if error is None:
                        events(run, "finished", seconds=time.time() - started, job_id=str(job.job_id))
                        continue
                    message = f"job {job.job_id} failed: {_reason(error)}; log: {job.paths.stdout}"
                    failures[run.name] = message
                    events(run, "failed", error=message, job_id=str(job.job_id))
                    log.error("run %s: %s", run.name, message)
                if waiting:
                    time.sleep(poll_s)
    except KeyboardInterrupt:
        for job in waiting.values():
            job.cancel(check=False)
        log.warning("interrupted: cancelled %d unfinished job(s) (%s); the same command resumes them",
                    len(waiting), ", ".join(str(j.job_id) for j in waiting.values()))
        raise
    return failures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--launcher` and the SLURM options of `mtspeech ablate`."""
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: --jobs subprocesses here (default); slurm: one submitit job per run")
    group = parser.add_argument_group("SLURM (with --launcher slurm)")
    group.add_argument("--slurm-partition", default=None, help="partition (default: the cluster's)")
    group.add_argument("--slurm-gpus-per-node", type=int, default=None,
                       help="GPUs per job; a run is one process, so it uses one")
    group.add_argument("--slurm-cpus-per-task", type=int, default=None,
                       help="CPU cores per run; also its torch threads unless --threads is given")
    group.add_argument("--slurm-time-min", type=int, default=None,
                       help="time limit per job in minutes; a job that reaches it is requeued and resumes")
    group.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. account=myproj (repeatable)")
    group.add_argument("--slurm-poll-s", type=float, default=15.0, help="seconds between job status checks")


def options_from_args(args: argparse.Namespace) -> SlurmOptions:
    """The `SlurmOptions` of parsed `mtspeech ablate` arguments (ConfigError on a bad --slurm-arg)."""
    return SlurmOptions(partition=args.slurm_partition, gpus_per_node=args.slurm_gpus_per_node,
                        cpus_per_task=args.slurm_cpus_per_task, time_min=args.slurm_time_min,
                        extra=parse_slurm_args(args.slurm_arg), poll_s=args.slurm_poll_s)
