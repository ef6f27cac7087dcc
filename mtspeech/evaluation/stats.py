"""Statistics for ablations: seed summaries with t confidence intervals, paired bootstrap for WER."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Summary:
    """Mean of n runs, sample std (ddof=1) and the two-sided t confidence interval of the mean.

    With one run std and the interval are nan: one seed says nothing about spread.
    """

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def mean_std_ci(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Summarise one metric over seeds.

    mean = sum(x) / n;  std = sqrt(sum((x - mean)^2) / (n - 1));
    CI = mean -/+ t_{(1 + confidence)/2, n-1} * std / sqrt(n)   (Student t, n - 1 dof).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_std_ci needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1:
        return Summary(mean, math.nan, 1, math.nan, math.nan, confidence)
    std = float(x.std(ddof=1))
    half = float(_scipy_stats.t.ppf((1 + confidence) / 2, df=x.size - 1)) * std / math.sqrt(x.size)
    return Summary(mean, std, int(x.size), mean - half, mean + half, confidence)


@dataclass(frozen=True)
class BootstrapResult:
    """delta = WER(B) - WER(A) on the full set (negative: B better), its percentile CI, p-value."""

    wer_a: float
    wer_b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n_resamples: int

    def p_text(self) -> str:
        """The p-value at the resolution the resampling allows (see `format_p`)."""
        return format_p(self.p_value, self.n_resamples)


def format_p(p: float, n_resamples: int) -> str:
    """A two-sided bootstrap p-value as text, never finer than the resampling resolves.

    With n resamples the smallest non-zero two-sided p is 2/n; when no resample crossed zero
    the honest statement is "p < 2/n" (e.g. "< 0.002" with 1,000), never "p < 0.001".
    """
    floor = 2.0 / n_resamples
    if p < floor:
        return f"< {floor:.2g} (0 of {n_resamples:,} resamples crossed zero)"
    digits = max(3, math.ceil(-math.log10(floor)))  # enough to show a p of 2/n
    return f"{p:.{digits}f}"


def paired_bootstrap(
    errors_a: Sequence[tuple[int, int]],
    errors_b: Sequence[tuple[int, int]],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap over utterances (Bisani & Ney 2004) for the WER difference of two systems.

    errors_a / errors_b: per utterance (errors, ref_words) of systems A and B on the *same*
    utterances in the same order (`ErrorCounts.errors, .ref_len` from
    `metrics.utterance_word_errors`). Each resample draws n utterance indices with
    replacement and recomputes delta* = sum(e_B)/sum(N) - sum(e_A)/sum(N) over them.
    CI: the (1-confidence)/2 and (1+confidence)/2 percentiles of delta*.
    p-value (two-sided): 2 * min(share(delta* <= 0), share(delta* >= 0)), capped at 1 —
    how often the resampled difference has (or ties) the sign opposite to either side.
    """
    a = np.asarray(errors_a, dtype=np.int64).reshape(-1, 2)
    b = np.asarray(errors_b, dtype=np.int64).reshape(-1, 2)
    if a.shape != b.shape:
        raise ValueError(f"systems scored on different utterance sets: {len(a)} vs {len(b)}")
    if not np.array_equal(a[:, 1], b[:, 1]):
        raise ValueError("reference word counts differ between A and B: not the same utterances")
    if a[:, 1].sum() == 0:
        raise ValueError("no reference words: WER undefined")
    n = len(a)
    rng = np.random.default_rng(seed)
    diff = b[:, 0] - a[:, 0]
    words = a[:, 1]
    deltas = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // max(n, 1))  # bound memory of the (resamples, n) index block
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        ref_words = words[idx].sum(1)
        deltas[start:stop] = diff[idx].sum(1) / np.maximum(ref_words, 1)
    total = words.sum()
    tail = (1 - confidence) / 2
    p = min(1.0, 2 * min(float((deltas <= 0).mean()), float((deltas >= 0).mean())))
    return BootstrapResult(
        wer_a=float(a[:, 0].sum() / total),
        wer_b=float(b[:, 0].sum() / total),
        delta=float(diff.sum() / total),
        ci_low=float(np.quantile(deltas, tail)),
        ci_high=float(np.quantile(deltas, 1 - tail)),
        p_value=p,
        n_resamples=n_resamples,
    )
