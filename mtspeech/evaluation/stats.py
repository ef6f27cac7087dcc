"""Statistics for ablations and comparisons.

- `mean_std_ci`: one metric over seeds (t interval of the mean);
- `paired_bootstrap`: two systems on the same utterances (training seed held fixed);
- `speaker_bootstrap`: one system's error rate (or two systems' difference) resampling
  speakers, for splits of few voices, where utterances of one voice fail together;
- `seed_utterance_bootstrap` / `seed_t_interval`: two systems over paired training seeds, the
  interval a recipe or grid verdict needs (`SeedAwareDelta`);
- `adjust_p_values` (Holm / Benjamini-Hochberg) and `verdict`: one report's family of
  comparisons read at the adjusted level, and no verdict below `MIN_SEEDS_FOR_VERDICT` seeds.
"""

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


@dataclass(frozen=True)
class SpeakerBootstrap:
    """An error rate sum(e)/sum(N) and its percentile interval over speakers; with a second
    system on the same utterances also B's rate and delta = B - A with its interval (None
    without one)."""

    rate: float
    ci_low: float
    ci_high: float
    speakers: int
    n_resamples: int
    confidence: float
    rate_b: float | None = None
    ci_low_b: float | None = None
    ci_high_b: float | None = None
    delta: float | None = None
    delta_ci_low: float | None = None
    delta_ci_high: float | None = None


def speaker_bootstrap(
    errors: Sequence[tuple[int, int]],
    speakers: Sequence,
    errors_b: Sequence[tuple[int, int]] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> SpeakerBootstrap:
    """Bootstrap over speakers (a cluster bootstrap; Field & Welsh 2007) of an error rate.

    errors: per utterance (errors, reference length), e.g. `ErrorCounts.errors, .ref_len`;
    speakers: each utterance's speaker. A resample draws the split's S speakers with
    replacement and pools all utterances of each drawn speaker (a speaker drawn twice counts
    twice): rate* = sum over drawn speakers of e / sum of N. Utterances of one voice are not
    independent (a voice the model cannot hear fails on all of them), so with few speakers
    this interval is the honest one, wider than `paired_bootstrap`'s over utterances.
    errors_b: a second system on the same utterances in the same order; its rate and B - A
    are resampled with the same speaker draws (paired). CI: percentiles of rate*.
    """
    a = np.asarray(errors, dtype=np.int64).reshape(-1, 2)
    if len(speakers) != len(a):
        raise ValueError(f"{len(a)} utterances but {len(speakers)} speaker labels")
    if a[:, 1].sum() == 0:
        raise ValueError("no reference words: error rate undefined")
    b = None if errors_b is None else np.asarray(errors_b, dtype=np.int64).reshape(-1, 2)
    if b is not None and not np.array_equal(a[:, 1], b[:, 1]):
        raise ValueError("reference lengths differ between A and B: not the same utterances in the same order")
    _, spk = np.unique(np.asarray([str(s) for s in speakers]), return_inverse=True)
    n_spk = int(spk.max()) + 1
    per_speaker = lambda col: np.bincount(spk, weights=col, minlength=n_spk)  # noqa: E731
    words, err_a = per_speaker(a[:, 1]), per_speaker(a[:, 0])
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_spk, np.full(n_spk, 1 / n_spk), size=n_resamples).astype(np.float64)  # (R, S)
    drawn_words = np.maximum(counts @ words, 1.0)  # drawn speakers with no reference word: rate 0
    tail = (1 - confidence) / 2
    interval = lambda x: (float(np.quantile(x, tail)), float(np.quantile(x, 1 - tail)))  # noqa: E731
    reps_a = counts @ err_a / drawn_words
    out = dict(rate=float(a[:, 0].sum() / a[:, 1].sum()), speakers=n_spk, n_resamples=n_resamples,
               confidence=confidence)
    out["ci_low"], out["ci_high"] = interval(reps_a)
    if b is not None:
        reps_b = counts @ per_speaker(b[:, 0]) / drawn_words
        out["rate_b"] = float(b[:, 0].sum() / b[:, 1].sum())
        out["ci_low_b"], out["ci_high_b"] = interval(reps_b)
        out["delta"] = out["rate_b"] - out["rate"]
        out["delta_ci_low"], out["delta_ci_high"] = interval(reps_b - reps_a)
    return SpeakerBootstrap(**out)


# ---------------------------------------------------------------------------------------------
# Seed-aware comparisons: the noise that can change an ablation's conclusion is the training
# seed's, not only the test utterances'. Everything below returns a `SeedAwareDelta`.

MIN_SEEDS_FOR_VERDICT = 3
"""Fewer paired seeds than this give no verdict: two seeds cannot tell a plateau escape from an effect."""


@dataclass(frozen=True)
class SeedAwareDelta:
    """B minus A over paired training seeds (negative: B lower).

    `delta` is the mean of `per_seed` (one Δ per seed, in `seeds` order). The interval is
    delta -/+ t_{(1+confidence)/2, S-1} * se, with S = len(seeds); `level` says which noise
    `se` holds: "seeds+utterances" (two-level bootstrap) or "seeds" (the per-seed Δ alone, for
    metrics with no per-utterance errors, e.g. EER or F1). With one seed there is no interval.
    """

    delta: float
    per_seed: tuple[float, ...]
    seeds: tuple[int, ...]
    se: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    level: str
    confidence: float = 0.95
    n_resamples: int = 0

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    def as_dict(self) -> dict:
        return {"delta": self.delta, "per_seed": dict(zip(map(str, self.seeds), self.per_seed)),
                "se": self.se, "ci_low": self.ci_low, "ci_high": self.ci_high, "p_value": self.p_value,
                "level": self.level, "confidence": self.confidence, "n_resamples": self.n_resamples}


def _t_result(delta: float, per_seed, seeds, se: float, level: str, confidence: float,
              n_resamples: int = 0) -> SeedAwareDelta:
    """Student t on S - 1 degrees of freedom around `delta`: the seeds are the scarce level, so
    their count, not the thousands of utterances, sets how wide the interval must be."""
    n = len(per_seed)
    if n < 2:
        return SeedAwareDelta(delta, tuple(per_seed), tuple(seeds), None, None, None, None, level,
                              confidence, n_resamples)
    df = n - 1
    half = float(_scipy_stats.t.ppf((1 + confidence) / 2, df)) * se
    if se > 0:
        p = float(2 * _scipy_stats.t.sf(abs(delta) / se, df))
    else:  # no spread at all: either exactly no difference or the same difference every time
        p = 1.0 if delta == 0 else 0.0
    return SeedAwareDelta(delta, tuple(per_seed), tuple(seeds), se, delta - half, delta + half,
                          min(1.0, p), level, confidence, n_resamples)


def seed_t_interval(per_seed: Sequence[float], seeds: Sequence[int] | None = None, utterance_se: float = 0.0,
                    confidence: float = 0.95) -> SeedAwareDelta:
    """The seed-aware Δ from per-seed differences alone (paired t over seeds).

    se^2 = var(per_seed) / S + utterance_se^2: `utterance_se` adds the test set's own sampling
    noise when it is known without the per-utterance errors (e.g. from a committed utterance
    bootstrap); 0 for metrics that have none (EER, F1, accuracy).
    """
    d = np.asarray(per_seed, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("seed_t_interval needs at least one paired seed")
    seeds = list(range(d.size)) if seeds is None else list(seeds)
    if len(seeds) != d.size:
        raise ValueError(f"{d.size} per-seed values but {len(seeds)} seeds")
    var = float(d.var(ddof=1)) / d.size if d.size > 1 else 0.0
    se = math.sqrt(var + utterance_se ** 2)
    level = "seeds+utterances" if utterance_se > 0 else "seeds"
    return _t_result(float(d.mean()), d.tolist(), seeds, se, level, confidence)


def seed_utterance_bootstrap(
    errors_a: Sequence[np.ndarray],
    errors_b: Sequence[np.ndarray],
    seeds: Sequence[int] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> SeedAwareDelta:
    """Two-level paired bootstrap of an error rate, B minus A, over training seeds and utterances.

    errors_a[s] / errors_b[s]: (N, 2) arrays of per-utterance (errors, reference length) of the
    runs of seed s, every seed scored on the same N utterances in the same order. A replicate
    draws S seeds with replacement, then N utterances with replacement, and takes the mean over
    the drawn seeds of each seed's rate difference on the drawn utterances. The utterance draw
    is shared by the drawn seeds because every seed was scored on the same utterances (a crossed
    design; Owen 2007): drawing per seed would let the test set's own quirks average out over
    seeds, which they do not. The interval is t-based on the replicates' standard error
    (inflated by S/(S-1), the seed level's small-sample bias): a percentile interval over 3
    resampled seeds can never reach past the most extreme seed, so it always excludes 0 when
    three seeds agree in sign, however far apart they are.
    """
    a = np.stack([np.asarray(x, dtype=np.int64).reshape(-1, 2) for x in errors_a])
    b = np.stack([np.asarray(x, dtype=np.int64).reshape(-1, 2) for x in errors_b])
    if a.shape != b.shape:
        raise ValueError(f"systems scored on different seeds/utterances: {a.shape[:2]} vs {b.shape[:2]}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError("seed_utterance_bootstrap needs at least one seed and one utterance")
    if not (np.array_equal(a[:, :, 1], b[:, :, 1]) and (a[:, :, 1] == a[:1, :, 1]).all()):
        raise ValueError("reference lengths differ between runs: not the same utterances in the same order")
    words = a[0, :, 1].astype(np.float64)
    if words.sum() == 0:
        raise ValueError("no reference tokens: error rate undefined")
    n_seeds, n_utt = a.shape[:2]
    seeds = list(range(n_seeds)) if seeds is None else list(seeds)
    diff = (b[:, :, 0] - a[:, :, 0]).astype(np.float64)  # (S, N)
    per_seed = (diff.sum(1) / words.sum()).tolist()
    delta = float(np.mean(per_seed))
    if n_seeds < 2:
        return _t_result(delta, per_seed, seeds, 0.0, "seeds+utterances", confidence, n_resamples)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n_utt)  # bound the (replicates, N) count block
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=k) / n_seeds  # (k, S)
        utt_c = rng.multinomial(n_utt, np.full(n_utt, 1 / n_utt), size=k).astype(np.float64)  # (k, N)
        reps[start:start + k] = ((seed_w @ diff) * utt_c).sum(1) / np.maximum(utt_c @ words, 1.0)
    se = float(reps.std(ddof=1)) * math.sqrt(n_seeds / (n_seeds - 1))
    return _t_result(delta, per_seed, seeds, se, "seeds+utterances", confidence, n_resamples)


HOLM_MAX_FAMILY = 20
"""Families up to this size get Holm's family-wise control; larger ones Benjamini-Hochberg."""


def adjust_p_values(p_values: Sequence[float], method: str | None = None) -> tuple[list[float], str]:
    """Multiplicity-adjusted p-values for one report's family of comparisons.

    method: "holm" (family-wise error) or "fdr_bh" (Benjamini-Hochberg q-values); by default
    Holm for families of up to `HOLM_MAX_FAMILY` comparisons, Benjamini-Hochberg above, where
    holding the family-wise error would leave no power at all. Returns (adjusted, method).
    """
    from statsmodels.stats.multitest import multipletests

    p = [float(x) for x in p_values]
    method = method or ("holm" if len(p) <= HOLM_MAX_FAMILY else "fdr_bh")
    if method not in ("holm", "fdr_bh"):
        raise ValueError(f"method must be 'holm' or 'fdr_bh', got {method!r}")
    if not p:
        return [], method
    return [float(x) for x in multipletests(p, method=method)[1]], method



def verdict(result: SeedAwareDelta, p_adjusted: float | None, alpha: float = 0.05,
            lower_is_better: bool = True) -> str:
    """The one verdict word for a seed-aware comparison, at the multiplicity-adjusted level.

    "better" / "worse" (B against A) only when at least `MIN_SEEDS_FOR_VERDICT` seeds are paired
    and the adjusted p is below alpha; otherwise "no detectable effect at N seeds", or
    "no verdict (N seeds < 3)".
    """
    n = result.n_seeds
    if n < MIN_SEEDS_FOR_VERDICT:
        return f"no verdict ({n} seed{'s' if n != 1 else ''} < {MIN_SEEDS_FOR_VERDICT})"
    if p_adjusted is None or p_adjusted >= alpha:
        return f"no detectable effect at {n} seeds"
    lower = result.delta < 0
    return "better" if lower == lower_is_better else "worse"


def clip_interval(low: float | None, high: float | None, bounds: tuple[float, float] | None):
    """An interval clipped to a metric's range, e.g. (0, 1) for an error rate (a t interval of
    a mean of 24 %, 97 % and 36 % CER would otherwise reach below 0)."""
    if bounds is None or low is None or high is None:
        return low, high
    return max(bounds[0], low), min(bounds[1], high)
