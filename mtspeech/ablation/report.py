"""The ablation report: every metric over seeds, every variant against the baseline with a
seed-aware interval and a multiplicity-adjusted verdict, task relatedness, and plots.

`build_report` aggregates finished runs; `reaggregate` re-reads a committed `results.json`
whose runs are gone (their per-seed metrics are in it) and reports it by today's rules.
The Markdown lives in `render.py`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from mtspeech.ablation.grid import Grid, Run
from mtspeech.ablation.render import render_report
from mtspeech.ablation.verdicts import adjust_family, compare_split, lower_is_better, metric_bounds
from mtspeech.evaluation.compare import ERROR_FIELDS, utterance_errors
from mtspeech.evaluation.stats import paired_bootstrap

log = logging.getLogger(__name__)

N_RESAMPLES = 2000


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _aligned_errors(runs: list[Run], split: str, task: str, metric: str) -> tuple[list[str], list[dict]]:
    """Per run, utterance id -> (errors, reference length); and the ids every run scored."""
    paths = [r.dir / "eval" / split / "hypotheses.jsonl" for r in runs]
    if not all(p.is_file() for p in paths):  # no per-utterance errors kept: the seed level alone
        return [], []
    per_run = [utterance_errors(p, task, metric) for p in paths]
    ids = sorted(set.intersection(*(set(e) for e in per_run))) if per_run else []
    return ids, per_run


def paired_seed_bootstrap(pairs: list[tuple[Run, Run]], split: str, task: str, metric: str,
                          n_resamples: int = 1000) -> dict | None:
    """The utterance-only view: baseline run A vs variant run B for each seed pair, each
    utterance's errors summed over the pairs, utterances resampled. It holds the trained models
    fixed, so it is printed beside the seed-aware interval, never instead of it."""
    ids, errs = _aligned_errors([r for pair in pairs for r in pair], split, task, metric)
    if not ids:
        return None
    summed = [np.array([[sum(e[u][k] for e in errs[i::2]) for k in (0, 1)] for u in ids]) for i in (0, 1)]
    if not summed[0][:, 1].sum():
        return None
    res = paired_bootstrap(summed[0], summed[1], n_resamples=n_resamples, seed=0)
    return {"baseline": res.wer_a, "variant": res.wer_b, "delta": res.delta, "ci_low": res.ci_low,
            "ci_high": res.ci_high, "p_value": res.p_value, "n_resamples": res.n_resamples,
            "utterances": len(ids), "seeds_paired": sorted(rb.seed for _, rb in pairs)}


def _summary(values: list[float], seeds: list[int], metric: str) -> dict:
    from mtspeech.evaluation.stats import clip_interval, mean_std_ci

    s = mean_std_ci(values)
    nan = lambda x: None if x != x else x  # noqa: E731 — JSON has no NaN
    low, high = clip_interval(nan(s.ci_low), nan(s.ci_high), metric_bounds(metric, values))
    return {"mean": s.mean, "std": nan(s.std), "ci_low": low, "ci_high": high, "n": s.n,
            "values": values, "seeds": seeds}


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


def _comparisons(grid: Grid, finished: list[Run], split: str, table: dict, n_resamples: int,
                 alias: Mapping[str, str]) -> dict:
    """Every variant against the baseline on one split; per-utterance errors where kept.
    `alias`: a tuned baseline's name → the trial it chose (whose runs it is)."""
    by_key = {(r.variant, r.seed): r for r in finished}
    by_key.update({(name, r.seed): r for name, trial in alias.items() for r in finished if r.variant == trial})

    def task_metric(metric: str) -> tuple[str, str] | None:
        task, _, name = metric.rpartition("/")
        return (task, name) if name in ERROR_FIELDS and task else None

    def errors(variant: str, metric: str, seeds) -> tuple[list, list] | None:
        tm = task_metric(metric)
        if tm is None:
            return None
        runs = [by_key[(grid.baseline, s)] for s in seeds] + [by_key[(variant, s)] for s in seeds]
        ids, errs = _aligned_errors(runs, split, *tm)
        if not ids or not sum(errs[0][u][1] for u in ids):
            return None
        arrays = [np.array([e[u] for u in ids]) for e in errs]
        return arrays[:len(seeds)], arrays[len(seeds):]

    def utterance_only(variant: str, metric: str) -> dict | None:
        tm = task_metric(metric)
        pairs = [(by_key[(grid.baseline, r.seed)], r) for r in finished
                 if r.variant == alias.get(variant, variant) and (grid.baseline, r.seed) in by_key]
        return paired_seed_bootstrap(pairs, split, *tm, n_resamples=1000) if tm and pairs else None

    return compare_split(table, grid.baseline, errors, utterance_only, n_resamples=n_resamples)


def build_report(grid: Grid, out: str | Path, runs: list[Run] | None = None, n_resamples: int = N_RESAMPLES,
                 failed: Mapping[str, str] | None = None) -> dict:
    """Aggregate finished runs into `out/report.md`, `out/results.json` and plots under `out/plots/`.

    `failed`: run name → error, listed in the report. Returns the results dict.
    """
    out = Path(out)
    runs = runs if runs is not None else [Run(v, s, out / "runs" / v / f"seed{s}")
                                          for s in grid.seeds for v in grid.variants]
    finished = [r for r in runs if r.done(grid.splits)]
    report: dict = {"baseline": grid.baseline, "seeds": list(grid.seeds), "variants": list(grid.variants),
                    "runs_finished": [r.name for r in finished],
                    "runs_missing": [r.name for r in runs if r not in finished],
                    "failed": dict(failed or {}), "splits": {}, "plots": [],
                    "selection_splits": list(grid.dev), "final": grid.final,
                    "test_splits": list(grid.test) if grid.final else [],
                    "test_splits_not_scored": [] if grid.final else list(grid.test)}
    if (out / "final.json").is_file():
        report["final_record"] = json.loads((out / "final.json").read_text())
    alias: dict[str, str] = {}  # tuned baseline → its chosen trial
    trials = {t for srch in grid.searches for t in srch.trials}
    for split in grid.splits:
        per_run = {r: json.loads(r.results_path(split).read_text()) for r in finished}
        if per_run:
            report.setdefault("asr_task", next(iter(per_run.values()))["asr_task"])
        table: dict[str, dict[str, dict]] = {}
        for variant in grid.variants:
            vr = [r for r in finished if r.variant == variant]
            metrics = sorted({m for r in vr for m in per_run[r]["metrics"]})
            table[variant] = {m: _summary([per_run[r]["metrics"][m] for r in vr if m in per_run[r]["metrics"]],
                                          [r.seed for r in vr if m in per_run[r]["metrics"]], m)
                              for m in metrics}
        if split == next(iter(grid.dev)) and grid.searches:  # tuned baselines pick on dev, once
            alias = _choose_trials(grid, table, report)
        table.update({name: table[trial] for name, trial in alias.items()})
        compared = {v: row for v, row in table.items() if v not in trials}  # the trials: a table, not a family
        comparisons = _comparisons(grid, finished, split, compared, n_resamples, alias)
        report["splits"][split] = {"manifest": grid.splits[split], "role": grid.role(split), "table": table,
                                   "comparisons": comparisons}
    _finish(report, out)
    curves = {}
    for variant in grid.variants:
        per_seed = [dict(_asr_curve(r)) for r in finished if r.variant == variant]
        per_seed = [c for c in per_seed if c]
        if per_seed:
            steps = sorted(set.intersection(*(set(c) for c in per_seed)))
            curves[variant] = [(s, sum(c[s] for c in per_seed) / len(per_seed)) for s in steps]
    if curves:
        from mtspeech.evaluation.plots import plot_training_curves

        png = plot_training_curves(curves, out / "plots" / "train_asr_loss.png", ylabel="ASR CTC loss",
                                   log_y=True, title="main-task training loss, mean over seeds")
        report["plots"].append(str(png.relative_to(out)))
        report["training_curve_plot"] = str(png.relative_to(out))
    report["stopping"] = stopping_report(finished, out / "plots")
    report["plots"] += report["stopping"].get("plots", [])
    report["relatedness"] = relatedness_report(grid, finished, report, out / "plots")
    report["plots"] += report["relatedness"].get("plots", [])
    _write(report, out)
    return report


def _choose_trials(grid: Grid, table: dict, report: dict) -> dict[str, str]:
    """Each search's trial with the best dev mean of the main task's selection metric."""
    from mtspeech.ablation.search import choose

    metric = f"{report.get('asr_task', 'asr')}/{grid.recipe.get('train', {}).get('best_metric', 'cer')}"
    report["searches"] = {}
    alias = {}
    for srch in grid.searches:
        pick = choose(srch, table, metric, lower_is_better(metric))
        report["searches"][srch.name] = {**pick, "from": srch.base, "split": next(iter(grid.dev))}
        if pick["chosen"]:
            alias[srch.name] = pick["chosen"]
    return alias


def stopping_report(finished: list[Run], plots_dir: Path) -> dict:
    """How each run ended (`stopping.json`: plateau or cap) and the dev curves. A grid is
    converged only if every run stopped on its dev plateau; otherwise it is budget-limited,
    and the curves show how far from flat its runs were."""
    from mtspeech.evaluation.plots import plot_training_curves

    runs, curves, metric = {}, {}, None
    for r in finished:
        path = r.dir / "stopping.json"
        if not path.is_file():
            runs[r.name] = {"stopped_by": None}
            continue
        rec = json.loads(path.read_text())
        metric = rec["metric"]
        key = metric.removeprefix("dev/")
        runs[r.name] = {k: rec[k] for k in ("stopped_by", "epochs", "updates", "cap")}
        runs[r.name]["dev_curve"] = [(h["epoch"], h[key]) for h in rec["dev_curve"] if key in h]
        curves.setdefault(f"seed{r.seed}", {})[r.variant] = runs[r.name]["dev_curve"]
    ways = [v["stopped_by"] for v in runs.values()]
    out: dict = {"runs": runs, "metric": metric, "plots": [],
                 "converged": bool(ways) and all(w == "plateau" for w in ways),
                 "budget_updates": max((v.get("updates") or 0 for v in runs.values()), default=0)}
    if None in ways:
        out["verdict"] = "not recorded for every run (no stopping.json): treat as budget-limited"
    elif out["converged"]:
        out["verdict"] = "converged: every run stopped on its dev plateau"
    else:
        out["verdict"] = (f"budget-limited at {out['budget_updates']} updates: "
                          f"{ways.count('cap')} of {len(ways)} runs stopped at the cap, not on a dev plateau")
    if curves:
        png = plot_training_curves(curves, plots_dir / "dev_curves.png", ylabel=metric or "dev",
                                   title="dev curve of every run (panel: variant, line: seed)")
        out["plots"].append(str(png.relative_to(plots_dir.parent)))
    return out


def _finish(report: dict, out: Path) -> None:
    """The family's adjustment and verdicts, and the per-split plots (metric bars, Δ forest)."""
    from mtspeech.evaluation.plots import plot_deltas, plot_metric_bars

    report["family"] = adjust_family({s: sec["comparisons"] for s, sec in report["splits"].items()})
    for split, sec in report["splits"].items():
        plots = []
        table = sec["table"]
        for task in sorted({m.split("/")[0] for row in table.values() for m in row}):
            metrics = sorted({m for row in table.values() for m in row if m.split("/")[0] == task})
            rows = {v: {m: row[m]["values"] for m in metrics} for v, row in table.items()
                    if all(m in row for m in metrics)}
            if rows:
                bounds = {m: b for m in metrics if (b := metric_bounds(m, [x for r in rows.values() for x in r[m]]))}
                png = plot_metric_bars(rows, metrics, out / "plots" / f"{split}_{task}.png", error="ci",
                                       title=f"{split}: {task}", bounds=bounds)
                plots.append(str(png.relative_to(out)))
            compared = [m for m in metrics if any(m in c for c in sec["comparisons"].values())]
            if compared:
                png = plot_deltas(sec["comparisons"], compared, out / "plots" / f"{split}_{task}_delta.png",
                                  title=f"{split}: {task}")
                plots.append(str(png.relative_to(out)))
        sec["plots"] = plots
        report["plots"] += plots


def _write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(render_report(report), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(report, indent=1))


def reaggregate(results_json: str | Path, out: str | Path, baseline: str | None = None,
                n_resamples: int = N_RESAMPLES) -> dict:
    """Report a committed grid again, by today's rules, from its `results.json` alone (as first
    written, or as this function rewrote it: reading its own output gives the same report).

    The per-seed metrics are in the file (each variant's `values`, in the seed order of
    `runs_finished`). Per-utterance errors were not committed, so the seed-aware interval is
    the per-seed Δ's t interval plus, where the file holds the utterance bootstrap of that very
    comparison (the ASR task's CER and WER against the file's own baseline), that bootstrap's
    standard error in quadrature; elsewhere it is the seed level alone, and says so (`level`).
    `baseline`: another variant to compare against (a "vs-X" view).
    """
    from scipy.stats import norm

    old = json.loads(Path(results_json).read_text())
    out = Path(out)
    baseline = baseline or old["baseline"]
    searches = old.get("searches") or {}  # tuned baselines: each compared as its chosen trial
    alias = {name: pick["chosen"] for name, pick in searches.items() if pick.get("chosen")}
    trials = {t for pick in searches.values() for t in pick.get("trials", {})}
    if baseline not in old["variants"] and baseline not in alias:
        raise ValueError(f"{results_json}: no variant {baseline!r}; variants are {old['variants'] + list(alias)}")
    seeds_of = {}
    for name in old["runs_finished"]:
        variant, _, seed = name.rpartition("/seed")
        seeds_of.setdefault(variant, []).append(int(seed))
    seeds_of.update({name: seeds_of.get(trial, []) for name, trial in alias.items()})
    report = {k: old[k] for k in ("seeds", "variants", "runs_finished", "runs_missing", "failed", "asr_task",
                                  "searches", "selection_splits", "final", "test_splits", "test_splits_not_scored")
              if k in old}
    report.update(baseline=baseline, splits={}, plots=[],
                  reaggregated_from=old.get("reaggregated_from")
                  or {"file": Path(results_json).name, "baseline_of_file": old["baseline"]})
    z = float(norm.ppf(0.975))
    for split, sec in old["splits"].items():
        table = {}
        for variant, row in sec["table"].items():
            seeds = seeds_of.get(variant, [])
            table[variant] = {m: _summary(s["values"], s.get("seeds") or
                                          (seeds if len(seeds) == len(s["values"]) else []), m)
                              for m, s in row.items()}
        same_baseline = baseline == old["baseline"]
        boots = sec.get("bootstrap", {}) if same_baseline else {}  # the file as first written
        kept = sec.get("comparisons", {}) if same_baseline else {}  # a file this function wrote

        def old_boot(variant: str, metric: str) -> dict | None:
            task, _, name = metric.rpartition("/")
            if task != old.get("asr_task"):
                return None
            return boots.get(name, {}).get(variant) or kept.get(variant, {}).get(metric, {}).get("utterance_only")

        def utterance_se(variant: str, metric: str) -> float:
            b = old_boot(variant, metric)
            return (b["ci_high"] - b["ci_low"]) / (2 * z) if b else 0.0

        compared = {v: row for v, row in table.items() if v not in trials}  # the trials: a table, not a family
        comparisons = compare_split(compared, baseline, utterance_only=old_boot, utterance_se=utterance_se,
                                    n_resamples=n_resamples)
        report["splits"][split] = {"manifest": sec["manifest"], "table": table, "comparisons": comparisons}
    _finish(report, out)
    for key in ("training_curve_plot",):  # drawn from training logs that were not committed: kept
        if old.get(key) and (out / old[key]).is_file():
            report[key] = old[key]
            report["plots"].append(old[key])
    if "selection_splits" not in old:  # a file from before dev-only selection
        report["selection_note"] = ("these runs predate dev-only selection: the splits below were scored together "
                                    "and informed recipe choices, so they are exploratory, not a final test")
    report["stopping"] = old.get("stopping") or {
        "runs": {}, "converged": False, "plots": [],
        "verdict": "not recorded (these runs predate stopping.json; the issue-30 audit of their logs found "
                   "none stopped on its patience rule): budget-limited at the grid's epoch cap"}
    report["relatedness"] = _relatedness_effects(old.get("relatedness", {}), report)
    report["plots"] += [p for p in report["relatedness"].get("plots", []) if (out / p).is_file()]
    _write(report, out)
    return report


def _effects(report: dict, variant: str) -> dict:
    """The variant's Δ ASR CER against the baseline, per split (seed-aware), for the relatedness table."""
    main = report.get("asr_task")
    effect = {}
    for split, sec in report["splits"].items():
        c = sec["comparisons"].get(variant, {}).get(f"{main}/cer")
        effect[split] = None if c is None else {k: c[k] for k in ("delta", "ci_low", "ci_high", "verdict")}
    return effect


def _relatedness_effects(rel: dict, report: dict) -> dict:
    """A committed relatedness table with each variant's effect re-read by today's rules."""
    rows = {v: {**row, "effect_on_asr_cer": _effects(report, v)} for v, row in rel.get("variants", {}).items()}
    return {"variants": rows, "plots": rel.get("plots", [])}


def relatedness_report(grid: Grid, finished: list[Run], report: dict, plots_dir: Path) -> dict:
    """Per variant and auxiliary task: the relatedness its runs logged (`train.relatedness_every`;
    each run's mean over its last half of measurements, then mean ± std over seeds) beside
    the variant's measured effect on ASR (Δ CER against the baseline, seed-aware)."""
    from mtspeech.evaluation.plots import plot_training_curves
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
            return _summary(values, [], key) if values else None

        tasks = list(dict.fromkeys(k.split("/")[2] for m in means for k in m if k.startswith(f"{PREFIX}/cos/")))
        rows[variant] = {"effect_on_asr_cer": _effects(report, variant), "tasks": {}}
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
