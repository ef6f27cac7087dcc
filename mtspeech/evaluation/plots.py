"""Ablation plots (matplotlib, Agg) with a JSON sidecar holding exactly the plotted numbers.

Every `plot_*` writes `out.png` and `out.json`; the sidecar lets tests and reports check
the figure against the table it came from without reading pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on training machines or CI
import matplotlib.pyplot as plt  # noqa: E402

from mtspeech.evaluation.stats import mean_std_ci  # noqa: E402


def _finite_or_none(x: float) -> float | None:
    return None if math.isnan(x) else x  # JSON has no nan


def _save(fig, out_png: Path, sidecar: dict) -> Path:
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90, bbox_inches="tight")  # 90: legible, and the committed grids stay small
    plt.close(fig)
    out_png.with_suffix(".json").write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    return out_png


def plot_metric_bars(
    table: Mapping[str, Mapping[str, Sequence[float] | float]],
    metrics: Sequence[str],
    out_png: str | Path,
    error: str = "ci",
    confidence: float = 0.95,
    title: str | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Bar chart of variants x metrics: one panel per metric (they have different scales).

    table[variant][metric] is the list of per-seed values (or one float). Bars show the
    mean, a dot each seed; error bars show the t confidence interval (`error="ci"`, clipped to
    `bounds[metric]` when given, e.g. (0, 1) for an error rate) or the sample std
    (`error="std"`); with one seed there is no error bar (recorded as null).
    """
    if error not in ("ci", "std"):
        raise ValueError(f"error must be 'ci' or 'std', got {error!r}")
    out_png = Path(out_png)
    variants = list(table)
    for v in variants:
        missing = [m for m in metrics if m not in table[v]]
        if missing:
            raise ValueError(f"variant {v!r} has no value for metric(s) {missing}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 1.2 * len(variants)) * len(metrics), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sidecar = {"kind": "metric_bars", "error": error, "confidence": confidence, "variants": variants, "metrics": {}}
    for ax, metric in zip(axes[0], metrics):
        rows = {}
        for v in variants:
            raw = table[v][metric]
            values = [float(raw)] if isinstance(raw, (int, float)) else [float(x) for x in raw]
            s = mean_std_ci(values, confidence)
            err = s.half_width if error == "ci" else s.std
            low, high = (s.ci_low, s.ci_high) if error == "ci" else (s.mean - s.std, s.mean + s.std)
            if bounds and metric in bounds and not math.isnan(low):
                low, high = max(bounds[metric][0], low), min(bounds[metric][1], high)
            rows[v] = {"mean": s.mean, "err": _finite_or_none(err), "low": _finite_or_none(low),
                       "high": _finite_or_none(high), "n": s.n, "values": values}
        means = [rows[v]["mean"] for v in variants]
        x = range(len(variants))
        ax.bar(x, means, color=[colors[i % len(colors)] for i in x], edgecolor="black", linewidth=0.5, alpha=0.6)
        has_err = [i for i, v in enumerate(variants) if rows[v]["err"] is not None]  # no bar for one seed
        if has_err:
            yerr = [[means[i] - rows[variants[i]]["low"] for i in has_err],
                    [rows[variants[i]]["high"] - means[i] for i in has_err]]
            ax.errorbar(has_err, [means[i] for i in has_err], yerr=yerr,
                        fmt="none", ecolor="black", capsize=4, linewidth=1.2)
        for i, v in enumerate(variants):  # every seed a dot: three seeds can hide a plateau
            vals = rows[v]["values"]
            offsets = [0.0] if len(vals) == 1 else [0.24 * (k / (len(vals) - 1) - 0.5) for k in range(len(vals))]
            ax.scatter([i + o for o in offsets], vals, s=14, color="black", zorder=3)
        for i, m in enumerate(means):
            top = max([m, *rows[variants[i]]["values"], rows[variants[i]]["high"] or m])
            ax.annotate(f"{m:.3g}", (i, top), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        ax.set_xticks(list(x), variants, rotation=30 if len(variants) > 3 else 0, ha="right" if len(variants) > 3 else "center")
        ax.set_title(metric)
        ax.set_ylabel(metric)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
        sidecar["metrics"][metric] = rows
    n_seeds = sorted({r["n"] for rows in sidecar["metrics"].values() for r in rows.values()})
    bar_note = f"{int(confidence * 100)}% CI" if error == "ci" else "±1 std"
    fig.suptitle(f"{title + ' — ' if title else ''}mean over seeds (n={'/'.join(map(str, n_seeds))}), "
                 f"dots: seeds, bars: {bar_note}")
    fig.tight_layout()
    return _save(fig, out_png, sidecar)


def plot_training_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]] | Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    out_png: str | Path,
    ylabel: str = "loss",
    log_y: bool = False,
    title: str | None = None,
) -> Path:
    """Loss (or metric) against step, one line per variant.

    curves: {variant: [(step, value), ...]} for one panel, or
    {variant: {task: [(step, value), ...]}} for one panel per task.
    """
    out_png = Path(out_png)
    nested = any(isinstance(c, Mapping) for c in curves.values())
    per_task: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for variant, c in curves.items():
        tasks = c if nested else {ylabel: c}
        for task, points in tasks.items():
            per_task.setdefault(task, {})[variant] = [(float(s), float(y)) for s, y in points]
    if not per_task:
        raise ValueError("plot_training_curves got no curves")
    fig, axes = plt.subplots(1, len(per_task), figsize=(5 * len(per_task), 3.8), squeeze=False)
    variants = list(curves)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (task, lines) in zip(axes[0], per_task.items()):
        for variant, points in lines.items():
            if points:
                steps, ys = zip(*points)
                ax.plot(steps, ys, label=variant, color=colors[variants.index(variant) % len(colors)], linewidth=1.4)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    sidecar = {
        "kind": "training_curves",
        "ylabel": ylabel,
        "panels": {task: {v: [list(p) for p in pts] for v, pts in lines.items()} for task, lines in per_task.items()},
    }
    return _save(fig, out_png, sidecar)


def plot_train_log(train_log: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """One training run at a glance, from its `train_log.jsonl`: every task's training loss
    (left) and every dev metric per epoch (one panel per task). Re-logged steps of a resumed
    run count once (the last record wins). `title` defaults to the run folder's name."""
    train: dict[str, dict[float, float]] = {}
    dev: dict[str, dict[str, dict[float, float]]] = {}
    for line in Path(train_log).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        for key, value in rec.items():
            if key.startswith("loss/"):
                train.setdefault(key[5:], {})[rec["step"]] = value
            elif key.startswith("dev/") and not key.endswith("/loss"):
                task, metric = key[4:].split("/", 1)
                dev.setdefault(task, {}).setdefault(metric, {})[rec["step"]] = value
    # plot_training_curves wants {line: {panel: points}}: one panel of training losses (a
    # line per task), then a panel per task of its dev metrics (a line per metric).
    by_line: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for task, points in train.items():
        by_line.setdefault(task, {})["training loss"] = sorted(points.items())
    for task, metrics in dev.items():
        for metric, points in metrics.items():
            by_line.setdefault(metric, {})[f"dev {task}"] = sorted(points.items())
    return plot_training_curves(by_line, out_png, ylabel="value",
                                title=title or Path(train_log).parent.name)


def plot_learned(train_log: str | Path, out_png: str | Path, title: str | None = None) -> Path | None:
    """What a run learned besides its heads, from its `train_log.jsonl`, over steps: each
    auxiliary task's gradient cosine with the main task and its lookahead affinity on the
    main task's loss (mtspeech/relatedness.py), each `layer: learned` task's layer
    weights (one panel per task, a line per layer), and the cross-stitch α of task towers
    (encoders/towers.py: one panel per tower layer, a line per entry "to ← from").
    None (nothing drawn) if none was logged."""
    cos: dict[str, dict[float, float]] = {}
    affinity: dict[tuple[str, str], dict[float, float]] = {}
    weights: dict[str, dict[str, dict[float, float]]] = {}
    alphas: dict[str, dict[str, dict[float, float]]] = {}  # tower layer → "to ← from" → step → α
    for line in Path(train_log).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line) if line.strip() else {}
        for key, value in rec.items():
            parts = key.split("/")
            if parts[:2] == ["relatedness", "cos"] and len(parts) == 3:  # all shared parameters
                cos.setdefault(parts[2], {})[rec["step"]] = value
            elif parts[:2] == ["relatedness", "affinity"] and len(parts) == 4:
                affinity.setdefault((parts[2], parts[3]), {})[rec["step"]] = value
            elif parts[0] == "layer_weight" and len(parts) == 3:
                weights.setdefault(parts[1], {}).setdefault(f"layer {parts[2]}", {})[rec["step"]] = value
            elif parts[0] == "cross_stitch" and len(parts) == 4:
                alphas.setdefault(parts[1], {}).setdefault(f"{parts[2]} ← {parts[3]}", {})[rec["step"]] = value
    # The main task is the one the affinities measure that has no cosine of its own.
    mains = {i for _, i in affinity} - set(cos)
    main = next(iter(mains)) if len(mains) == 1 else None
    by_line: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for task, points in cos.items():
        by_line.setdefault(task, {})["gradient cosine with the main task"] = sorted(points.items())
    for (j, i), points in affinity.items():
        if i == main and j != main:
            by_line.setdefault(j, {})[f"affinity: a step on the task, {main}'s loss"] = sorted(points.items())
    for task, layers in weights.items():
        for layer, points in layers.items():
            by_line.setdefault(layer, {})[f"layer weights: {task}"] = sorted(points.items())
    for layer, entries in alphas.items():
        for entry, points in entries.items():
            by_line.setdefault(entry, {})[f"cross-stitch α, tower layer {layer}"] = sorted(points.items())
    if not by_line:
        return None
    return plot_training_curves(by_line, out_png, ylabel="value", title=title or Path(train_log).parent.name)


def plot_deltas(comparisons: Mapping[str, Mapping[str, Mapping]], metrics: Sequence[str], out_png: str | Path,
                title: str | None = None) -> Path:
    """Forest plot of each variant's Δ against the baseline, one panel per metric.

    comparisons[variant][metric]: a comparison of `ablation.verdicts.compare_split` (per-seed
    Δ, seed-aware interval, optional utterance-only interval). Each seed is a dot; the thick
    line is the seed-aware 95 % interval, the thin grey one the utterance-only interval
    (training seeds held fixed), drawn so the difference between the two is seen.
    """
    out_png = Path(out_png)
    variants = [v for v in comparisons if any(m in comparisons[v] for m in metrics)]
    if not variants:
        raise ValueError("plot_deltas got no comparison for the metrics")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.45 * len(variants) + 1.6),
                             squeeze=False)
    sidecar: dict = {"kind": "deltas", "variants": variants, "metrics": {}}
    for ax, metric in zip(axes[0], metrics):
        rows = {}
        for y, v in enumerate(variants):
            c = comparisons[v].get(metric)
            if c is None:
                continue
            pts = [100 * d for d in c["per_seed"].values()]
            ax.scatter(pts, [y] * len(pts), s=14, color="black", zorder=3)
            ax.plot([100 * c["delta"]], [y], marker="|", markersize=12, color="tab:blue")
            if c["ci_low"] is not None:
                ax.plot([100 * c["ci_low"], 100 * c["ci_high"]], [y, y], color="tab:blue", linewidth=3, alpha=0.6)
            u = c.get("utterance_only")
            if u:
                ax.plot([100 * u["ci_low"], 100 * u["ci_high"]], [y - 0.22] * 2, color="grey", linewidth=1)
            rows[v] = {"delta": c["delta"], "per_seed": c["per_seed"], "ci_low": c["ci_low"],
                       "ci_high": c["ci_high"], "verdict": c.get("verdict")}
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(variants)), variants)
        ax.invert_yaxis()
        ax.set_xlabel(f"Δ {metric} (points)")
        ax.grid(axis="x", alpha=0.3)
        sidecar["metrics"][metric] = rows
    fig.suptitle(f"{title + ' — ' if title else ''}Δ against the baseline: dots seeds, blue seed-aware 95 % CI, "
                 "grey utterance-only", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png, sidecar)
