"""The ablation report: every metric as mean ± std over seeds with a 95% t interval, its
difference from the baseline, paired bootstraps over utterances, task relatedness, and plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

from mtspeech.ablation.grid import Grid, Run
from mtspeech.evaluation.compare import utterance_errors
from mtspeech.evaluation.stats import format_p

log = logging.getLogger(__name__)

LOWER_IS_BETTER = ("wer", "cer", "per", "eer")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def paired_seed_bootstrap(pairs: list[tuple[Run, Run]], split: str, task: str, metric: str,
                          n_resamples: int = 1000) -> dict | None:
    """Paired bootstrap of an error rate, baseline run A vs variant run B for each pair (same seed).

    Each utterance's errors and reference length are summed over the paired seeds (so the
    pooled rate is the mean of the per-seed rates); utterances are the resampled unit. Only
    utterances scored in every run count, so both sides have the same reference lengths.
    """
    from mtspeech.evaluation.stats import paired_bootstrap

    acc_a: dict[str, list[int]] = {}
    acc_b: dict[str, list[int]] = {}
    for ra, rb in pairs:
        ea = utterance_errors(ra.dir / "eval" / split / "hypotheses.jsonl", task, metric)
        eb = utterance_errors(rb.dir / "eval" / split / "hypotheses.jsonl", task, metric)
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
    from mtspeech.evaluation.stats import mean_std_ci

    s = mean_std_ci(values)
    nan = lambda x: None if x != x else x  # noqa: E731 — JSON has no NaN
    return {"mean": s.mean, "std": nan(s.std), "ci_low": nan(s.ci_low), "ci_high": nan(s.ci_high),
            "n": s.n, "values": values}


def build_report(grid: Grid, out: str | Path, runs: list[Run] | None = None, n_resamples: int = 1000,
                 failed: Mapping[str, str] | None = None) -> dict:
    """Aggregate finished runs into `out/report.md`, `out/results.json` and plots under `out/plots/`.

    `failed`: run name → error, listed in the report. Returns the results dict.
    """
    from mtspeech.evaluation.plots import plot_metric_bars, plot_training_curves

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
