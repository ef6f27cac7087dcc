"""Auxiliary-task ablations: a grid of variants × seeds, trained, evaluated and compared.

    mtspeech ablate --grid recipes/synthetic/ablation.yaml [--out DIR] [--jobs N] [--seeds 0 1 2]

A grid (YAML, see recipes/synthetic/ablation.yaml and docs/ablation.md) names a base
`recipe`, `shared` overrides for every run (e.g. a shorter schedule), `variants` (each a
small override: dotted keys `tasks.speaker.adversarial: true` and/or nested mappings merged
with `mtspeech.config.merge`, where `null` removes a key, e.g. a task), `seeds`, the
`baseline` variant, the `test` manifests to evaluate on and `evaluate` options.

Every run lives in `OUT/runs/<variant>/seed<k>/`: `run.json` (what to run: resolved config,
test manifests, evaluation options), `config.yaml` (the same config for `mtspeech train`),
the trainer's outputs and `eval/<split>/results.json`. A run is done when every split's
results exist; re-running the grid skips done runs, evaluates trained ones (`final.pt`) and
resumes half-trained ones from their `last.pt`, so an interrupted grid just continues.

Runs execute in parallel as `--jobs` subprocesses (`python -m mtspeech.ablate --run DIR`),
each with `train.threads = cores // jobs`. On SLURM, `--launcher slurm` submits one job per
run and waits for them (`mtspeech.ablation_launch`); elsewhere launch each run with torchrun
(`--print-commands` lists them), then run the grid once more to evaluate and report.

The report (`OUT/report.md`, `OUT/results.json`, `OUT/plots/*.png` + JSON sidecars): every
metric as mean ± std over seeds with a 95% t interval, its difference from the baseline,
and a paired bootstrap over utterances of the WER and CER differences (seed k of each variant paired
with seed k of the baseline; per-utterance errors summed over the paired seeds). Runs that
logged task relatedness (`train.relatedness_every`) add a table of it beside each variant's
effect on ASR, and its curves (`relatedness_report`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtspeech.config import ConfigError, load_yaml, merge
from mtspeech.stats import format_p

log = logging.getLogger(__name__)

LOWER_IS_BETTER = ("wer", "cer", "per", "eer")
_GRID_KEYS = {"recipe", "out", "seeds", "baseline", "test", "shared", "evaluate", "variants", "select"}


# =========================================================================== the grid
@dataclass(frozen=True)
class Grid:
    """A resolved ablation grid.

    recipe: the base experiment as a plain dict (its `base:` chain already merged);
    shared / variants[name]: nested override dicts (`None` deletes a key);
    test: split name → manifest path; evaluate: keyword options of `evaluate.evaluate`.
    """

    recipe: dict
    variants: dict[str, dict]
    seeds: tuple[int, ...]
    baseline: str
    test: dict[str, str]
    shared: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    out: str | None = None


def nest(overrides: Mapping | None, where: str = "") -> dict:
    """Turn dotted keys into nested mappings: {"a.b": 1, "c": {"d.e": 2}} → {"a": {"b": 1}, "c": {"d": {"e": 2}}}.

    Keys are merged in order, so dotted and nested forms can be mixed in one override.
    """
    out: dict = {}
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where or 'override'}: keys must be non-empty strings, got {key!r}")
        if isinstance(value, Mapping):
            value = nest(value, f"{where}.{key}" if where else key)
        for part in reversed(key.split(".")):
            value = {part: value}
        out = _merge_keep_none(out, value)
    return out


def _merge_keep_none(base: Mapping, update: Mapping) -> dict:
    """Like `config.merge`, but keeps `None` values (they delete keys later, in the recipe)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge_keep_none(out[key], value)
        else:
            out[key] = value
    return out


def load_grid(source: str | Path | Mapping, seeds: list[int] | None = None,
              variants: list[str] | None = None) -> Grid:
    """Read a grid YAML (or dict). `seeds` / `variants` override the file's seeds and selection.

    A relative `recipe` is resolved against the grid file's folder; `test` manifests and the
    recipe's data paths are relative to the working directory, as in every recipe.
    """
    if isinstance(source, Mapping):
        raw, folder = dict(source), Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"grid file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        folder = path.parent
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a grid is a mapping")
    unknown = sorted(set(raw) - _GRID_KEYS)
    if unknown:
        raise ConfigError(f"unknown grid key(s) {unknown}; a grid has {sorted(_GRID_KEYS)}")
    for key in ("recipe", "variants", "test"):
        if key not in raw:
            raise ConfigError(f"grid: missing key {key!r}")
    recipe = raw["recipe"]
    if isinstance(recipe, Mapping):
        recipe = dict(recipe)
    else:
        recipe_path = Path(recipe)
        recipe = load_yaml(recipe_path if recipe_path.is_absolute() else folder / recipe_path)
    all_variants = raw["variants"]
    if not isinstance(all_variants, Mapping) or not all_variants:
        raise ConfigError("grid.variants: expected a non-empty mapping name → overrides")
    chosen = list(variants or raw.get("select") or all_variants)
    missing = [v for v in chosen if v not in all_variants]
    if missing:
        raise ConfigError(f"variant(s) {missing} are not in the grid; it has {list(all_variants)}")
    baseline = raw.get("baseline", chosen[0])
    if baseline not in all_variants:
        raise ConfigError(f"grid.baseline: {baseline!r} is not a variant")
    if baseline not in chosen:
        chosen.insert(0, baseline)  # every comparison needs it
    for name in chosen:
        if "/" in name or name in (".", ".."):
            raise ConfigError(f"variant name {name!r} cannot be a folder name")
    test = raw["test"]
    if isinstance(test, str):
        test = {Path(test).stem: test}
    if not isinstance(test, Mapping) or not test:
        raise ConfigError("grid.test: expected split name → manifest path")
    seeds_ = tuple(int(s) for s in (seeds if seeds else raw.get("seeds", [0])))
    if not seeds_:
        raise ConfigError("grid.seeds: at least one seed")
    return Grid(
        recipe=recipe,
        variants={v: nest(all_variants[v], v) for v in chosen},
        seeds=seeds_,
        baseline=baseline,
        test={str(k): str(v) for k, v in test.items()},
        shared=nest(raw.get("shared"), "shared"),
        evaluate=dict(raw.get("evaluate") or {}),
        out=raw.get("out"),
    )


def run_config(grid: Grid, variant: str, seed: int, run_dir: Path) -> dict:
    """The resolved experiment dict of one run: recipe ← shared ← variant ← seed and exp_dir."""
    from mtspeech.experiment import experiment_from_dict, experiment_to_dict

    data = merge(merge(grid.recipe, grid.shared), grid.variants[variant])
    data = merge(data, {"exp_dir": str(run_dir), "train": {"seed": seed}})
    try:  # validate now and store the fully resolved config (defaults filled in)
        return experiment_to_dict(experiment_from_dict(data))
    except ConfigError as e:
        raise ConfigError(f"variant {variant!r}: {e}") from None


# =========================================================================== runs
@dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    def results_path(self, split: str) -> Path:
        return self.dir / "eval" / split / "results.json"

    def done(self, splits) -> bool:
        return all(self.results_path(s).is_file() for s in splits)

    def state(self, splits) -> str:
        """done | evaluate (trained) | resume (last.pt) | train (nothing yet)."""
        if self.done(splits):
            return "done"
        if (self.dir / "final.pt").is_file():
            return "evaluate"
        if (self.dir / "last.pt").is_file():
            return "resume"
        return "train"


def plan_runs(grid: Grid, out: Path) -> list[Run]:
    """Write each run's `run.json` + `config.yaml` (checking an existing run was planned the
    same way) and return the runs, seed-major so a partial grid covers every variant early."""
    runs = []
    for seed in grid.seeds:
        for variant in grid.variants:
            run = Run(variant, seed, out / "runs" / variant / f"seed{seed}")
            spec = {"variant": variant, "seed": seed, "config": run_config(grid, variant, seed, run.dir),
                    "test": grid.test, "evaluate": grid.evaluate}
            spec_path = run.dir / "run.json"
            if spec_path.is_file():
                old = json.loads(spec_path.read_text())
                if old["config"] != spec["config"]:
                    diff = _diff(old["config"], spec["config"])
                    raise ConfigError(
                        f"run {run.name} in {out} was started with another config (differs at {diff}); "
                        f"delete {run.dir} to retrain it or use another --out")
            run.dir.mkdir(parents=True, exist_ok=True)
            spec_path.write_text(json.dumps(spec, indent=1))
            (run.dir / "config.yaml").write_text(yaml.safe_dump(spec["config"], sort_keys=False))
            runs.append(run)
    return runs


def _diff(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _diff(a.get(k), b.get(k), f"{where}.{k}" if where else k)
    return where or "<root>"


def run_one(run_dir: str | Path, threads: int | None = None) -> None:
    """Train (or resume) and evaluate one planned run; what a grid worker process does.

    Under torchrun every rank trains; only rank 0 evaluates.
    """
    from mtspeech.config import apply_overrides
    from mtspeech.evaluate import evaluate
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
    for split, manifest in spec["test"].items():
        out = run_dir / "eval" / split
        if not (out / "results.json").is_file():
            evaluate(run_dir / "final.pt", manifest, out, threads=threads, **spec["evaluate"])
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
    (this module's and `mtspeech.ablation_launch`'s) use it, so they skip the same runs."""
    todo = []
    for run in runs:
        state = run.state(grid.test)
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
    cmd = [sys.executable, "-m", "mtspeech.ablate", "--run", str(run.dir)]
    return cmd + (["--threads", str(threads)] if threads else [])


def _run_subprocess(run: Run, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(run.dir / "run.log", "a") as logf:
        proc = subprocess.run(worker_command(run, threads), stdout=logf, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited with status {proc.returncode}; see {run.dir / 'run.log'}")


# =========================================================================== report
def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_ERROR_FIELDS = {"wer": ("errors", "ref_words"), "cer": ("char_errors", "ref_chars")}


def _utterance_errors(path: Path, task: str, metric: str) -> dict[str, tuple[int, int]]:
    """utterance id → (errors, reference length) of `task`'s `metric` (wer | cer) from hypotheses.jsonl."""
    errors, length = _ERROR_FIELDS[metric]
    out = {}
    for row in _read_jsonl(path):
        rec = row.get(task, {})
        if errors in rec:
            out[row["id"]] = (int(rec[errors]), int(rec[length]))
    return out


def paired_seed_bootstrap(pairs: list[tuple[Run, Run]], split: str, task: str, metric: str,
                          n_resamples: int = 1000) -> dict | None:
    """Paired bootstrap of an error rate, baseline run A vs variant run B for each pair (same seed).

    Each utterance's errors and reference length are summed over the paired seeds (so the
    pooled rate is the mean of the per-seed rates); utterances are the resampled unit. Only
    utterances scored in every run count, so both sides have the same reference lengths.
    """
    from mtspeech.stats import paired_bootstrap

    acc_a: dict[str, list[int]] = {}
    acc_b: dict[str, list[int]] = {}
    for ra, rb in pairs:
        ea = _utterance_errors(ra.dir / "eval" / split / "hypotheses.jsonl", task, metric)
        eb = _utterance_errors(rb.dir / "eval" / split / "hypotheses.jsonl", task, metric)
        for uid in ea.keys() & eb.keys():
            for acc, e in ((acc_a, ea[uid]), (acc_b, eb[uid])):
                row = acc.setdefault(uid, [0, 0, 0])
                row[0] += e[0]
                row[1] += e[1]
                row[2] += 1
    ids = sorted(u for u in acc_a if acc_a[u][2] == len(pairs) and acc_b[u][2] == len(pairs))
    if not ids or not sum(acc_a[u][1] for u in ids):
        return None
    res = paired_bootstrap([acc_a[u][:2] for u in ids], [acc_b[u][:2] for u in ids], n_resamples=n_resamples, seed=0)
    return {"baseline": res.wer_a, "variant": res.wer_b, "delta": res.delta, "ci_low": res.ci_low,
            "ci_high": res.ci_high, "p_value": res.p_value, "n_resamples": res.n_resamples,
            "utterances": len(ids), "seeds_paired": sorted(rb.seed for _, rb in pairs)}


def _asr_curve(run: Run) -> list[tuple[int, float]]:
    """(step, ASR loss) from the run's train_log.jsonl (a resumed run's re-logged steps: last wins)."""
    path = run.dir / "train_log.jsonl"
    spec = json.loads((run.dir / "run.json").read_text())
    from mtspeech.experiment import experiment_from_dict

    key = f"loss/{experiment_from_dict(spec['config']).asr_task}"
    if not path.is_file():
        return []
    by_step = {rec["step"]: rec[key] for rec in _read_jsonl(path) if key in rec}
    return sorted(by_step.items())


def _summary(values: list[float]) -> dict:
    from mtspeech.stats import mean_std_ci

    s = mean_std_ci(values)
    nan = lambda x: None if x != x else x  # noqa: E731 — JSON has no NaN
    return {"mean": s.mean, "std": nan(s.std), "ci_low": nan(s.ci_low), "ci_high": nan(s.ci_high),
            "n": s.n, "values": values}


def build_report(grid: Grid, out: str | Path, runs: list[Run] | None = None, n_resamples: int = 1000,
                 failed: Mapping[str, str] | None = None) -> dict:
    """Aggregate finished runs into `out/report.md`, `out/results.json` and plots under `out/plots/`.

    `failed`: run name → error, listed in the report. Returns the results dict.
    """
    from mtspeech.plots import plot_metric_bars, plot_training_curves

    out = Path(out)
    runs = runs if runs is not None else [Run(v, s, out / "runs" / v / f"seed{s}")
                                          for s in grid.seeds for v in grid.variants]
    finished = [r for r in runs if r.done(grid.test)]
    plots_dir = out / "plots"
    report: dict = {"baseline": grid.baseline, "seeds": list(grid.seeds), "variants": list(grid.variants),
                    "runs_finished": [r.name for r in finished],
                    "runs_missing": [r.name for r in runs if r not in finished],
                    "failed": dict(failed or {}), "splits": {}, "plots": []}
    for split in grid.test:
        per_run = {r: json.loads(r.results_path(split).read_text()) for r in finished}
        if per_run:
            report.setdefault("asr_task", next(iter(per_run.values()))["asr_task"])
        table: dict[str, dict[str, dict]] = {}
        for variant in grid.variants:
            vr = [r for r in finished if r.variant == variant]
            metrics = sorted({m for r in vr for m in per_run[r]["metrics"]})
            table[variant] = {m: _summary([per_run[r]["metrics"][m] for r in vr if m in per_run[r]["metrics"]])
                              for m in metrics}
        base = table.get(grid.baseline, {})
        deltas = {v: {m: row[m]["mean"] - base[m]["mean"] for m in row if m in base}
                  for v, row in table.items() if v != grid.baseline}

        # Paired bootstrap of the main task's WER and CER: seed k of the variant against seed k
        # of the baseline, each utterance's errors summed over the paired seeds.
        bootstrap: dict[str, dict] = {"wer": {}, "cer": {}}
        base_runs = {r.seed: r for r in finished if r.variant == grid.baseline}
        for variant in grid.variants:
            pairs = [(base_runs[r.seed], r) for r in finished if r.variant == variant and r.seed in base_runs]
            if variant == grid.baseline or not pairs:
                continue
            for metric in bootstrap:
                res = paired_seed_bootstrap(pairs, split, per_run[pairs[0][0]]["asr_task"], metric, n_resamples)
                if res is not None:
                    bootstrap[metric][variant] = res

        # One bar chart per task (metrics of one task share a scale and a set of variants).
        plots = []
        tasks = sorted({m.split("/")[0] for row in table.values() for m in row})
        for task in tasks:
            metrics = sorted({m for row in table.values() for m in row if m.split("/")[0] == task})
            rows = {v: {m: row[m]["values"] for m in metrics} for v, row in table.items()
                    if all(m in row for m in metrics)}
            if not rows:
                continue
            png = plot_metric_bars(rows, metrics, plots_dir / f"{split}_{task}.png", error="ci",
                                   title=f"{split}: {task}")
            plots.append(str(png.relative_to(out)))
        report["splits"][split] = {"manifest": grid.test[split], "table": table, "delta_vs_baseline": deltas,
                                   "bootstrap": bootstrap, "plots": plots}
        report["plots"] += plots

    curves = {}
    for variant in grid.variants:
        per_seed = [dict(_asr_curve(r)) for r in finished if r.variant == variant]
        per_seed = [c for c in per_seed if c]
        if per_seed:
            steps = sorted(set.intersection(*(set(c) for c in per_seed)))
            curves[variant] = [(s, sum(c[s] for c in per_seed) / len(per_seed)) for s in steps]
    if curves:
        png = plot_training_curves(curves, plots_dir / "train_asr_loss.png", ylabel="ASR CTC loss",
                                   log_y=True, title="main-task training loss, mean over seeds")
        report["plots"].append(str(png.relative_to(out)))
        report["training_curve_plot"] = str(png.relative_to(out))
    report["relatedness"] = relatedness_report(grid, finished, report, plots_dir)
    report["plots"] += report["relatedness"].get("plots", [])
    (out / "report.md").write_text(render_report(report), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(report, indent=1))
    return report


def relatedness_report(grid: Grid, finished: list[Run], report: dict, plots_dir: Path) -> dict:
    """Per variant and auxiliary task: the relatedness its runs logged (`train.relatedness_every`;
    each run's mean over its last half of measurements, then mean ± std over seeds) beside
    the variant's measured effect on ASR (Δ CER against the baseline, from `report`'s splits)."""
    from mtspeech.plots import plot_training_curves
    from mtspeech.relatedness import PREFIX, late_means, read_relatedness

    main = report.get("asr_task")
    rows: dict[str, dict] = {}
    curves: dict[str, dict[str, dict]] = {"cos": {}, "affinity": {}}
    for variant in grid.variants:
        logs = [log for log in (read_relatedness(r.dir / "train_log.jsonl") for r in finished if r.variant == variant)
                if log]
        if not logs or main is None:
            continue
        means = [late_means(log) for log in logs]

        def summary(key: str) -> dict | None:
            values = [m[key] for m in means if key in m]
            return _summary(values) if values else None

        tasks = list(dict.fromkeys(k.split("/")[2] for m in means for k in m if k.startswith(f"{PREFIX}/cos/")))
        effect = {}
        for split, sec in report["splits"].items():
            boot = sec["bootstrap"]["cer"].get(variant)
            delta = sec["delta_vs_baseline"].get(variant, {}).get(f"{main}/cer")
            effect[split] = ({"delta": boot["delta"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"]}
                             if boot else None if delta is None else {"delta": delta, "ci_low": None, "ci_high": None})
        rows[variant] = {"effect_on_asr_cer": effect, "tasks": {}}
        for task in tasks:
            groups = dict.fromkeys(k.split("/", 3)[3] for m in means for k in m if k.startswith(f"{PREFIX}/cos/{task}/"))
            rows[variant]["tasks"][task] = {
                "cos": summary(f"{PREFIX}/cos/{task}"),
                "cos_by_group": {g: summary(f"{PREFIX}/cos/{task}/{g}") for g in groups},
                "affinity_on_asr": summary(f"{PREFIX}/affinity/{task}/{main}"),
                "affinity_of_asr": summary(f"{PREFIX}/affinity/{main}/{task}"),
            }
            for kind, key in (("cos", f"{PREFIX}/cos/{task}"), ("affinity", f"{PREFIX}/affinity/{task}/{main}")):
                series = [dict(log[key]) for log in logs if key in log]
                if series:
                    steps = sorted(set.intersection(*(set(c) for c in series)))
                    curves[kind].setdefault(variant, {})[task] = [(st, sum(c[st] for c in series) / len(series))
                                                                   for st in steps]
    out: dict = {"variants": rows, "plots": []}
    labels = {"cos": "gradient cosine with ASR", "affinity": "lookahead affinity on ASR loss"}
    for kind, by_variant in curves.items():
        if by_variant:
            png = plot_training_curves(by_variant, plots_dir / f"relatedness_{kind}.png", ylabel=labels[kind],
                                       title=f"{labels[kind]} per auxiliary task, mean over seeds")
            out["plots"].append(str(png.relative_to(plots_dir.parent)))
    return out


def _render_relatedness(report: dict) -> list[str]:
    rel = report.get("relatedness", {})
    if not rel.get("variants"):
        return []
    splits = list(report["splits"])
    main = report.get("asr_task")
    cell = lambda s: "—" if s is None else (  # noqa: E731
        f"{s['mean']:+.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "") + f" (n={s['n']})")
    lines = ["", "## Task relatedness", "",
             f"Measured during training on the shared encoder (docs/ablation.md): cos = gradient cosine with "
             f"`{main}` over all shared parameters, Z = lookahead affinity (relative drop of the other task's loss "
             f"after an SGD step on one task's gradient); each run's mean over its last half of measurements, then "
             f"mean ± std over seeds. Effect = the variant's Δ {main} CER against the baseline (paired bootstrap "
             f"95% CI): the task's own effect only where it is the variant's one auxiliary task.", "",
             "| variant | task | cos | cos by layer group | Z task→ASR | Z ASR→task | "
             + " | ".join(f"effect on CER, {s}" for s in splits) + " |",
             "|---|---|---:|---|---:|---:|" + "---:|" * len(splits)]
    for variant, row in rel["variants"].items():
        effects = []
        for split in splits:
            e = row["effect_on_asr_cer"].get(split)
            ci = f" [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]" if e and e["ci_low"] is not None else ""
            effects.append("—" if e is None else f"{e['delta']:+.4f}{ci}")
        for task, t in row["tasks"].items():
            groups = ", ".join(f"{g} {s['mean']:+.2f}" for g, s in t["cos_by_group"].items() if s)
            lines.append(f"| {variant} | {task} | {cell(t['cos'])} | {groups or '—'} | {cell(t['affinity_on_asr'])} | "
                         f"{cell(t['affinity_of_asr'])} | " + " | ".join(effects) + " |")
    lines += [""] + [f"![{p}]({p})" for p in rel.get("plots", [])]
    return lines


def _fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def render_report(report: dict) -> str:
    """Markdown for `build_report`'s dict (see docs/ablation.md for how to read it)."""
    lines = [
        "# Ablation report",
        "",
        f"Baseline `{report['baseline']}`; seeds {report['seeds']}; "
        f"{len(report['runs_finished'])} runs finished"
        + (f", {len(report['runs_missing'])} missing ({', '.join(report['runs_missing'])})"
           if report["runs_missing"] else "") + ".",
        "",
        "Cells: mean ± sample std over seeds (n seeds), the 95% t interval of the mean, and Δ = mean minus "
        "the baseline's mean. wer/cer/per/eer: lower is better; the rest higher. See docs/ablation.md.",
    ]
    for split, sec in report["splits"].items():
        lines += ["", f"## {split} (`{sec['manifest']}`)"]
        tasks = sorted({m.split("/")[0] for row in sec["table"].values() for m in row},
                       key=lambda t: (t != report.get("asr_task"), t))
        for task in tasks:  # one table per task: its variants share its metrics
            metrics = sorted({m for row in sec["table"].values() for m in row if m.split("/")[0] == task})
            header = "| variant | " + " | ".join(f"{m} | 95% CI | Δ" for m in metrics) + " |"
            lines += ["", header, "|---|" + "---:|---|---:|" * len(metrics)]
            for variant, row in sec["table"].items():
                if not any(m in row for m in metrics):
                    continue
                cells = []
                for m in metrics:
                    s = row.get(m)
                    if s is None:
                        cells += ["—", "", ""]
                        continue
                    spread = f" ± {s['std']:.4f}" if s["std"] is not None else ""
                    ci = f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]" if s["ci_low"] is not None else "—"
                    delta = sec["delta_vs_baseline"].get(variant, {}).get(m)
                    cells += [f"{s['mean']:.4f}{spread} (n={s['n']})", ci, "" if delta is None else f"{delta:+.4f}"]
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        for metric, rows in sec["bootstrap"].items():
            if not rows:
                continue
            name = metric.upper()
            lines += ["", f"Paired bootstrap of the {name} difference against the baseline "
                      "(utterances resampled; errors summed over paired seeds):", "",
                      f"| variant | {name} baseline | {name} variant | Δ {name} | 95% CI | p | reading |",
                      "|---|---:|---:|---:|---|---:|---|"]
            for variant, b in rows.items():
                if b["ci_high"] < 0:
                    reading = "better than baseline (CI excludes 0)"
                elif b["ci_low"] > 0:
                    reading = "worse than baseline (CI excludes 0)"
                else:
                    reading = "CI includes 0: no clear effect"
                lines.append(f"| {variant} | {b['baseline']:.4f} | {b['variant']:.4f} | {b['delta']:+.4f} | "
                             f"[{b['ci_low']:+.4f}, {b['ci_high']:+.4f}] | {format_p(b['p_value'], b['n_resamples'])} | {reading} |")
        if sec["plots"]:
            lines += [""] + [f"![{p}]({p})" for p in sec["plots"]]
    lines += _render_relatedness(report)
    if report.get("training_curve_plot"):
        lines += ["", "## Training", "", f"![ASR loss]({report['training_curve_plot']})"]
    if report.get("failed"):
        lines += ["", "## Failed runs", ""] + [f"- {k}: {v}" for k, v in report["failed"].items()]
    return "\n".join(lines) + "\n"


# =========================================================================== CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mtspeech ablate`."""
    parser.add_argument("--grid", required=True, help="grid YAML (e.g. recipes/synthetic/ablation.yaml)")
    parser.add_argument("--out", default=None, help="output folder (default: the grid's `out`)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (subprocesses; local launcher)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores // jobs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the grid's)")
    parser.add_argument("--variants", nargs="+", default=None, help="variants to run (default: the grid's selection)")
    parser.add_argument("--report-only", action="store_true", help="only aggregate finished runs")
    parser.add_argument("--print-commands", action="store_true",
                        help="plan the runs and print one training command per unfinished run (for a cluster)")
    from mtspeech import ablation_launch  # --launcher and the SLURM options live with their code

    ablation_launch.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run `mtspeech ablate`; returns 0, or 1 when a run failed, 2 on a bad grid."""
    try:
        grid = load_grid(args.grid, seeds=args.seeds, variants=args.variants)
        out = args.out or grid.out
        if not out:
            raise ConfigError("no output folder: pass --out or set `out:` in the grid")
        out = Path(out)
        if args.print_commands:
            for run in plan_runs(grid, out):
                if run.state(grid.test) != "done":
                    print(f"torchrun --nproc_per_node=N -m mtspeech.ablate --run {run.dir}")
            return 0
        if args.report_only:
            report = build_report(grid, out)
        elif args.launcher == "slurm":
            from mtspeech.ablation_launch import options_from_args, run_grid_submitit

            report = run_grid_submitit(grid, out, options_from_args(args), threads=args.threads)
        else:
            report = run_grid(grid, out, jobs=args.jobs, threads=args.threads)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    log.info("report: %s", out / "report.md")
    return 1 if report.get("failed") else 0


def _worker_main(argv: list[str] | None = None) -> int:
    """`python -m mtspeech.ablate --run RUN_DIR [--threads N]`: train + evaluate one planned run."""
    p = argparse.ArgumentParser(prog="python -m mtspeech.ablate", description=_worker_main.__doc__)
    p.add_argument("--run", required=True, help="a run folder planned by the grid (holds run.json)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    run_one(args.run, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
