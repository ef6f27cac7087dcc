"""Every variant against the baseline, metric by metric, with the noise that can change the verdict.

A comparison pairs seed k of the variant with seed k of the baseline. Its interval is
seed-aware (`stats.SeedAwareDelta`): the two-level bootstrap over seeds and utterances where
the runs' per-utterance errors are at hand, the per-seed Δ alone where a metric has none (EER,
F1). One report's comparisons form its declared *family*: their p-values are adjusted
together (Holm, or Benjamini-Hochberg for large families) and the verdict word is read at the
adjusted level, so printing 400 comparisons does not manufacture 20 findings. The utterance-
only interval (training seeds held fixed) stays beside it, labelled for what it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mtspeech.evaluation.stats import (MIN_SEEDS_FOR_VERDICT, SeedAwareDelta, adjust_p_values, seed_t_interval,
                                       seed_utterance_bootstrap, verdict)

LOWER_IS_BETTER = ("wer", "cer", "per", "eer")
UNBOUNDED_ABOVE = ("wer", "cer", "per")  # insertions can push these past 1
RATES = ("eer", "accuracy", "f1", "precision", "recall", "auc")
ALPHA = 0.05

# (variant, metric, paired seeds) -> (baseline's per-seed (N, 2) errors, variant's), or None
UtteranceErrors = Callable[[str, str, Sequence[int]], tuple[list[np.ndarray], list[np.ndarray]] | None]
# (variant, metric) -> {"ci_low", "ci_high", "delta", ...} of an utterance-only bootstrap, or None
UtteranceOnly = Callable[[str, str], dict | None]


def lower_is_better(metric: str) -> bool:
    """wer / cer / per / eer: lower is better; accuracy, F1, AUC, precision, recall: higher."""
    return metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER


def metric_bounds(metric: str, values: Sequence[float]) -> tuple[float, float] | None:
    """The range a metric's interval is clipped to, or None for a metric with no fixed range
    (a gradient cosine). Rates live in [0, 1]; error rates with insertions may exceed 1, so
    their top is the largest value seen when that is above 1."""
    name = metric.rsplit("/", 1)[-1]
    if name in UNBOUNDED_ABOVE:
        return 0.0, max([1.0, *values])
    return (0.0, 1.0) if name in RATES else None


def _per_seed(summary: Mapping) -> dict[int, float]:
    """seed -> value of one variant's metric summary (`values` in `seeds` order)."""
    seeds = summary.get("seeds")
    if seeds is None or len(seeds) != len(summary["values"]):
        return {}
    return {int(s): float(v) for s, v in zip(seeds, summary["values"])}


def compare_split(table: Mapping[str, Mapping[str, Mapping]], baseline: str,
                  utterance_errors: UtteranceErrors | None = None,
                  utterance_only: UtteranceOnly | None = None,
                  utterance_se: Callable[[str, str], float] | None = None,
                  n_resamples: int = 2000) -> dict[str, dict[str, dict]]:
    """variant -> metric -> comparison (a `SeedAwareDelta` as a dict, plus the two means, the
    direction and the utterance-only interval). `table[variant][metric]` is a summary with
    per-seed `values` and their `seeds`. `utterance_se` (legacy results whose per-utterance
    errors were not kept) adds a known utterance-level standard error to the seed level."""
    base = table.get(baseline, {})
    out: dict[str, dict[str, dict]] = {}
    for variant, row in table.items():
        if variant == baseline:
            continue
        for metric, summary in row.items():
            if metric not in base:
                continue
            b, v = _per_seed(base[metric]), _per_seed(summary)
            seeds = sorted(b.keys() & v.keys())
            if not seeds:
                continue
            res: SeedAwareDelta | None = None
            errors = utterance_errors(variant, metric, seeds) if utterance_errors else None
            if errors is not None:
                res = seed_utterance_bootstrap(errors[0], errors[1], seeds, n_resamples=n_resamples)
            else:
                extra = utterance_se(variant, metric) if utterance_se else 0.0
                res = seed_t_interval([v[s] - b[s] for s in seeds], seeds, utterance_se=extra)
            row = res.as_dict()
            bounds = metric_bounds(metric, [*b.values(), *v.values()])
            if bounds and row["ci_low"] is not None:  # a difference of two rates in [lo, hi]
                span = bounds[1] - bounds[0]
                row["ci_low"], row["ci_high"] = max(-span, row["ci_low"]), min(span, row["ci_high"])
            out.setdefault(variant, {})[metric] = {
                **row, "n_seeds": res.n_seeds,
                "baseline": float(np.mean([b[s] for s in seeds])), "variant": float(np.mean([v[s] for s in seeds])),
                "lower_is_better": lower_is_better(metric),
                "utterance_only": utterance_only(variant, metric) if utterance_only else None,
            }
    return out


def adjust_family(splits: Mapping[str, Mapping[str, Mapping[str, dict]]], alpha: float = ALPHA,
                  method: str | None = None) -> dict:
    """Adjust every comparison of one report together and give each its verdict (in place).

    The family is every comparison the report prints with a p-value from at least
    `MIN_SEEDS_FOR_VERDICT` paired seeds; the others get "no verdict". Returns the family's
    declaration: size, method, alpha and members ("split | variant | metric").
    """
    members, p_values = [], []
    for split, by_variant in splits.items():
        for variant, by_metric in by_variant.items():
            for metric, c in by_metric.items():
                if c["p_value"] is not None and c["n_seeds"] >= MIN_SEEDS_FOR_VERDICT:
                    members.append((split, variant, metric))
                    p_values.append(c["p_value"])
    adjusted, method = adjust_p_values(p_values, method)
    by_key = dict(zip(members, adjusted))
    for split, by_variant in splits.items():
        for variant, by_metric in by_variant.items():
            for metric, c in by_metric.items():
                c["p_adjusted"] = by_key.get((split, variant, metric))
                res = SeedAwareDelta(c["delta"], tuple(c["per_seed"].values()), tuple(map(int, c["per_seed"])),
                                     c["se"], c["ci_low"], c["ci_high"], c["p_value"], c["level"])
                c["verdict"] = verdict(res, c["p_adjusted"], alpha, c["lower_is_better"])
    return {"size": len(members), "method": method, "alpha": alpha,
            "members": [" | ".join(m) for m in members],
            "rule": f"verdicts need >= {MIN_SEEDS_FOR_VERDICT} paired seeds and an adjusted p below alpha"}
