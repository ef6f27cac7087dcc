"""Markdown for an ablation report (`report.build_report` / `reaggregate`'s dict).

Rates are printed in percent and their differences in points. Every Δ carries its seed-aware
interval, its per-seed values, raw and adjusted p, and the verdict at the adjusted level;
the utterance-only interval (training seeds held fixed) follows, labelled for what it is.
"""

from __future__ import annotations

from collections import Counter

from mtspeech.ablation.verdicts import metric_bounds
from mtspeech.evaluation.stats import MIN_SEEDS_FOR_VERDICT

METHOD_NAMES = {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg (q-values)"}
LEVEL_NAMES = {"seeds+utterances": "seeds + utterances", "seeds": "seeds only"}


def _rate(metric: str) -> bool:
    return metric_bounds(metric, []) is not None


def _value(metric: str, x: float | None, digits: int = 2) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.{digits}f}" if _rate(metric) else f"{x:.4f}"


def _delta(metric: str, x: float | None) -> str:
    if x is None:
        return "—"
    return f"{100 * x:+.2f}" if _rate(metric) else f"{x:+.4f}"


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _header(report: dict) -> list[str]:
    fam = report.get("family", {})
    counts = Counter(c["verdict"].split(" (")[0].split(" at ")[0]
                     for sec in report["splits"].values() for row in sec["comparisons"].values() for c in row.values())
    lines = [
        "# Ablation report", "",
        f"Baseline `{report['baseline']}`; seeds {report['seeds']}; {len(report['runs_finished'])} runs finished"
        + (f", {len(report['runs_missing'])} missing ({', '.join(report['runs_missing'])})"
           if report["runs_missing"] else "") + ".",
    ]
    if "selection_splits" in report:
        lines += ["", f"Decisions read the dev split(s) {', '.join(f'`{s}`' for s in report['selection_splits'])}. "
                  + (f"Test split(s) {', '.join(f'`{s}`' for s in report['test_splits'])} scored once, "
                     "with `--final`." if report.get("final") else
                     f"Test split(s) {', '.join(f'`{s}`' for s in report['test_splits_not_scored'])} not scored: "
                     "`mtspeech ablate --final` scores them, once, at the end.")]
    if report.get("selection_note"):
        lines += ["", f"**Selection**: {report['selection_note']}."]
    src = report.get("reaggregated_from")
    if src:
        lines += ["", f"Re-aggregated from the committed `{src['file']}` (the runs' per-utterance errors were not "
                  "kept): each seed-aware interval is the per-seed Δ's t interval, plus the committed utterance "
                  f"bootstrap's standard error where the file has it (ASR against `{src['baseline_of_file']}`; "
                  "level \"seeds + utterances\"); elsewhere the seed level alone (\"seeds only\")."]
    lines += [
        "", "How to read it (docs/ablation.md): rates in %, Δ in points, variant minus baseline, seed k paired "
        "with seed k. **Seed-aware 95 % CI**: two-level paired bootstrap over training seeds and utterances, "
        "t quantile on seeds − 1 degrees of freedom. **Verdict**: `better`/`worse` only with ≥ "
        f"{MIN_SEEDS_FOR_VERDICT} paired seeds and an adjusted p below {fam.get('alpha', 0.05)}; else `no "
        "detectable effect at N seeds` or `no verdict`. The utterance-only CI holds the trained models fixed "
        "(test-set noise alone): it is no basis for a claim about a recipe.",
        "", f"**Family**: {fam.get('size', 0)} comparisons (every Δ below with ≥ {MIN_SEEDS_FOR_VERDICT} paired "
        f"seeds), adjusted by {METHOD_NAMES.get(fam.get('method'), fam.get('method'))}. Verdicts: "
        + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) + ".",
    ]
    return lines


def _metric_tables(report: dict, sec: dict) -> list[str]:
    lines = []
    table = sec["table"]
    tasks = sorted({m.split("/")[0] for row in table.values() for m in row},
                   key=lambda t: (t != report.get("asr_task"), t))
    for task in tasks:  # one table per task: its variants share its metrics
        metrics = sorted({m for row in table.values() for m in row if m.split("/")[0] == task})
        lines += ["", "| variant | " + " | ".join(f"{m} | 95% CI | seeds" for m in metrics) + " |",
                  "|---|" + "---:|---|---|" * len(metrics)]
        for variant, row in table.items():
            if not any(m in row for m in metrics):
                continue
            cells = []
            for m in metrics:
                s = row.get(m)
                if s is None:
                    cells += ["—", "", ""]
                    continue
                spread = f" ± {_value(m, s['std'])}" if s["std"] is not None else ""
                ci = f"[{_value(m, s['ci_low'])}, {_value(m, s['ci_high'])}]" if s["ci_low"] is not None else "—"
                cells += [f"{_value(m, s['mean'])}{spread} (n={s['n']})", ci,
                          " / ".join(_value(m, x, 1) for x in s["values"])]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def _comparison_table(sec: dict, method: str | None) -> list[str]:
    rows = [(v, m, c) for v, by_metric in sec["comparisons"].items() for m, c in sorted(by_metric.items())]
    if not rows:
        return []
    adj = "Holm p" if method == "holm" else "BH q"
    lines = ["", "Against the baseline:", "",
             f"| variant | metric | Δ | Δ per seed | seed-aware 95% CI | level | p | {adj} | verdict | "
             "utterance-only 95% CI (seeds fixed) |",
             "|---|---|---:|---|---|---|---:|---:|---|---|"]
    for variant, m, c in rows:
        per_seed = " / ".join(f"{_delta(m, d)} (s{s})" for s, d in c["per_seed"].items())
        ci = f"[{_delta(m, c['ci_low'])}, {_delta(m, c['ci_high'])}]" if c["ci_low"] is not None else "—"
        u = c.get("utterance_only")
        uci = f"[{_delta(m, u['ci_low'])}, {_delta(m, u['ci_high'])}]" if u else "—"
        lines.append(f"| {variant} | {m} | {_delta(m, c['delta'])} | {per_seed} | {ci} | "
                     f"{LEVEL_NAMES.get(c['level'], c['level'])} | {_p(c['p_value'])} | {_p(c.get('p_adjusted'))} | "
                     f"{c.get('verdict', '—')} | {uci} |")
    return lines


def _relatedness(report: dict) -> list[str]:
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
             f"mean ± std over seeds. Effect = the variant's Δ {main} CER in points against the baseline with its "
             f"seed-aware 95% CI and verdict: the task's own effect only where it is the variant's one auxiliary "
             f"task.", "",
             "| variant | task | cos | cos by layer group | Z task→ASR | Z ASR→task | "
             + " | ".join(f"effect on CER, {s}" for s in splits) + " |",
             "|---|---|---:|---|---:|---:|" + "---|" * len(splits)]
    for variant, row in rel["variants"].items():
        effects = []
        for split in splits:
            e = row["effect_on_asr_cer"].get(split)
            if e is None:
                effects.append("—")
                continue
            ci = f" [{100 * e['ci_low']:+.1f}, {100 * e['ci_high']:+.1f}]" if e.get("ci_low") is not None else ""
            effects.append(f"{100 * e['delta']:+.1f}{ci}: {e.get('verdict', '')}")
        for task, t in row["tasks"].items():
            groups = ", ".join(f"{g} {s['mean']:+.2f}" for g, s in t["cos_by_group"].items() if s)
            lines.append(f"| {variant} | {task} | {cell(t['cos'])} | {groups or '—'} | {cell(t['affinity_on_asr'])} | "
                         f"{cell(t['affinity_of_asr'])} | " + " | ".join(effects) + " |")
    lines += [""] + [f"![{p}]({p})" for p in rel.get("plots", [])]
    return lines


def render_report(report: dict) -> str:
    """The report as Markdown (see docs/ablation.md for how to read it)."""
    lines = _header(report)
    method = report.get("family", {}).get("method")
    for split, sec in report["splits"].items():
        role = {"dev": " — dev: selects", "test": " — test: final scoring"}.get(sec.get("role"), "")
        lines += ["", f"## {split} (`{sec['manifest']}`){role}", "",
                  "Mean ± sample std over seeds (n), the 95% t interval of the mean (clipped to the metric's "
                  "range), and each seed's value."]
        lines += _metric_tables(report, sec)
        lines += _comparison_table(sec, method)
        if sec.get("plots"):
            lines += [""] + [f"![{p}]({p})" for p in sec["plots"]]
    for name, srch in report.get("searches", {}).items():
        lines += ["", f"## Tuned baseline `{name}`", "",
                  f"Random search over `{srch['from']}`'s settings; the trial with the best mean `{srch['metric']}` "
                  f"on `{srch['split']}` over {srch.get('seeds', 0)} seeds is `{name}`: **{srch['chosen'] or 'none yet'}**. "
                  "Chosen on dev, so its dev numbers are optimistic: judge it on test (`--final`).", "",
                  "| trial | settings | dev mean | seeds |", "|---|---|---:|---:|"]
        lines += [f"| {t}{' ✓' if t == srch['chosen'] else ''} | "
                  + ", ".join(f"`{k}` {v}" for k, v in r["settings"].items())
                  + f" | {_value(srch['metric'], r['dev_mean'])} | {r['n']} |" for t, r in srch["trials"].items()]
    stopping = report.get("stopping")
    if stopping:
        lines += ["", "## Stopping", "", f"**{stopping['verdict']}**."]
        if stopping.get("runs") and any(v.get("stopped_by") for v in stopping["runs"].values()):
            lines += ["", "| run | stopped by | epochs | updates | cap (updates) |", "|---|---|---:|---:|---:|"]
            lines += [f"| {name} | {v['stopped_by']} | {v['epochs']} | {v['updates']} | {v['cap']['updates']} |"
                      for name, v in stopping["runs"].items() if v.get("stopped_by")]
        lines += [""] + [f"![{p}]({p})" for p in stopping.get("plots", [])]
    lines += _relatedness(report)
    if report.get("training_curve_plot"):
        lines += ["", "## Training", "", f"![ASR loss]({report['training_curve_plot']})"]
    if report.get("failed"):
        lines += ["", "## Failed runs", ""] + [f"- {k}: {v}" for k, v in report["failed"].items()]
    return "\n".join(lines) + "\n"
