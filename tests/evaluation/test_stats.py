"""Seed summaries, the paired bootstrap and the bootstrap over speakers."""

import math

import numpy as np
import pytest

from mtspeech.evaluation.stats import mean_std_ci, paired_bootstrap, speaker_bootstrap


def test_mean_std_ci_by_hand():
    s = mean_std_ci([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == pytest.approx(1.0) and s.n == 3
    # t_{0.975, 2} = 4.302653
    assert s.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert s.ci_low < s.mean < s.ci_high
    one = mean_std_ci([0.3])
    assert one.mean == 0.3 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_ci_shrinks_as_samples_grow():
    rng = np.random.default_rng(0)
    x = rng.normal(0.2, 0.05, size=400)
    widths = [mean_std_ci(x[:n]).half_width for n in (4, 16, 64, 400)]
    assert all(w1 > w2 for w1, w2 in zip(widths, widths[1:]))
    assert mean_std_ci(x[:16], confidence=0.99).half_width > widths[1]


def _system(rng, n, error_rate):
    words = rng.integers(5, 30, size=n)
    return np.stack([rng.binomial(words, error_rate), words], 1)


def test_identical_systems_give_zero_delta_and_p_one():
    a = _system(np.random.default_rng(1), 200, 0.2)
    r = paired_bootstrap(a, a.copy(), n_resamples=500, seed=0)
    assert r.delta == 0.0 and r.ci_low == 0.0 and r.ci_high == 0.0
    assert r.p_value == pytest.approx(1.0)


def test_clearly_better_system_is_significant():
    rng = np.random.default_rng(2)
    a = _system(rng, 300, 0.20)
    b = np.stack([rng.binomial(a[:, 1], 0.15), a[:, 1]], 1)
    r = paired_bootstrap(a, b, n_resamples=1000, seed=0)
    assert r.delta == pytest.approx(r.wer_b - r.wer_a)
    assert r.delta < 0 and r.ci_high < 0
    assert r.p_value < 0.05
    # same seed, same answer; swapping systems flips the sign
    assert paired_bootstrap(a, b, n_resamples=1000, seed=0) == r
    assert paired_bootstrap(b, a, n_resamples=1000, seed=0).delta == pytest.approx(-r.delta)


def test_noise_level_difference_is_not_significant():
    rng = np.random.default_rng(3)
    a = _system(rng, 50, 0.2)
    b = a.copy()
    b[0, 0] += 1  # one extra error in ~900 words
    assert paired_bootstrap(a, b, n_resamples=500, seed=0).p_value > 0.3


def test_mismatched_utterances_rejected():
    a = _system(np.random.default_rng(4), 10, 0.2)
    with pytest.raises(ValueError):
        paired_bootstrap(a, a[:9])


def test_p_values_are_never_finer_than_the_resampling():
    from mtspeech.evaluation.stats import format_p

    assert format_p(0.0, 1000) == "< 0.002 (0 of 1,000 resamples crossed zero)"
    assert format_p(0.002, 1000) == "0.002"
    assert format_p(0.0314, 1000) == "0.031"
    assert format_p(0.0, 100_000).startswith("< 2e-05")
    assert format_p(0.00004, 100_000) == "0.00004"


# --- seed-aware comparisons -------------------------------------------------------------------

def _seeded_runs(rates_a, rates_b, n=300, seed=0):
    """Per seed, (errors, words) of systems A and B on the same n utterances."""
    rng = np.random.default_rng(seed)
    words = rng.integers(5, 30, size=n)
    a = [np.stack([rng.binomial(words, r), words], 1) for r in rates_a]
    b = [np.stack([rng.binomial(words, r), words], 1) for r in rates_b]
    return a, b


def _pooled(runs):
    """The utterance-only view: each utterance's errors summed over the seeds."""
    return np.stack([sum(r[:, 0] for r in runs), sum(r[:, 1] for r in runs)], 1)


def test_seeds_that_disagree_widen_the_interval_past_zero():
    from mtspeech.evaluation.stats import seed_utterance_bootstrap

    # the ASR-only vs +phones pattern: one baseline seed stuck on the blank plateau
    a, b = _seeded_runs([0.24, 0.97, 0.36], [0.17, 0.20, 0.17])
    utt = paired_bootstrap(_pooled(a), _pooled(b), n_resamples=1000, seed=0)
    assert utt.ci_high < 0  # utterances alone: "clearly better"
    res = seed_utterance_bootstrap(a, b, seeds=[0, 1, 2], n_resamples=1000)
    assert res.level == "seeds+utterances" and res.seeds == (0, 1, 2)
    assert res.delta == pytest.approx(np.mean(res.per_seed))
    assert res.delta == pytest.approx(utt.delta)  # same point estimate (equal words per seed)
    assert res.ci_low < 0 < res.ci_high and res.p_value > 0.05
    assert verdict_of(res) == "no detectable effect at 3 seeds"


def test_seeds_that_agree_exclude_zero_both_ways():
    from mtspeech.evaluation.stats import seed_utterance_bootstrap

    a, b = _seeded_runs([0.30, 0.31, 0.29, 0.30], [0.20, 0.21, 0.20, 0.19])
    utt = paired_bootstrap(_pooled(a), _pooled(b), n_resamples=1000, seed=0)
    res = seed_utterance_bootstrap(a, b, n_resamples=1000)
    assert utt.ci_high < 0 and res.ci_high < 0 and res.p_value < 0.01
    # the seed-aware interval is the wider one: it holds the utterance noise too
    assert res.ci_high - res.ci_low > utt.ci_high - utt.ci_low
    assert verdict_of(res) == "better"
    assert verdict_of(seed_utterance_bootstrap(b, a, n_resamples=1000)) == "worse"


def verdict_of(res):
    from mtspeech.evaluation.stats import verdict

    return verdict(res, res.p_value)


def test_seed_t_interval_by_hand():
    from mtspeech.evaluation.stats import seed_t_interval

    d = [7.1, 77.0, 19.1]  # the per-seed Δ of ASR-only vs +phones
    r = seed_t_interval(d, seeds=[0, 1, 2])
    se = np.std(d, ddof=1) / math.sqrt(3)
    assert r.se == pytest.approx(se) and r.level == "seeds"
    assert (r.ci_low, r.ci_high) == pytest.approx((np.mean(d) - 4.302653 * se, np.mean(d) + 4.302653 * se), rel=1e-5)
    assert round(r.ci_low) == -58 and round(r.ci_high) == 127
    # a known utterance-level standard error adds in quadrature
    wider = seed_t_interval(d, utterance_se=10.0)
    assert wider.se == pytest.approx(math.sqrt(se ** 2 + 100)) and wider.level == "seeds+utterances"


def test_a_percentile_interval_over_three_seeds_would_exclude_zero_but_ours_does_not():
    """Why the interval is t-based: three seeds of one sign, far apart."""
    from mtspeech.evaluation.stats import seed_utterance_bootstrap

    a, b = _seeded_runs([0.30, 0.30, 0.30], [0.29, 0.10, 0.28], n=400, seed=5)
    res = seed_utterance_bootstrap(a, b, n_resamples=2000)
    assert all(d < 0 for d in res.per_seed)
    assert res.ci_high > 0


def test_no_verdict_below_three_seeds():
    from mtspeech.evaluation.stats import seed_t_interval, seed_utterance_bootstrap, verdict

    a, b = _seeded_runs([0.3, 0.3], [0.1, 0.1])
    two = seed_utterance_bootstrap(a, b, n_resamples=500)
    assert two.p_value < 0.05  # a clear difference, still
    assert verdict(two, two.p_value) == "no verdict (2 seeds < 3)"
    one = seed_t_interval([-0.2])
    assert one.ci_low is None and one.p_value is None
    assert verdict(one, None) == "no verdict (1 seed < 3)"


def test_holm_on_a_hand_worked_family():
    from mtspeech.evaluation.stats import adjust_p_values

    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone max
    adj, method = adjust_p_values([0.01, 0.04, 0.03, 0.005])
    assert method == "holm"
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # a large family gets Benjamini-Hochberg q-values: p_(i) * m / i, monotone from the top
    p = [0.001 * (i + 1) for i in range(30)]
    q, method = adjust_p_values(p)
    assert method == "fdr_bh" and q == pytest.approx([0.03] * 30)


def test_verdicts_use_the_adjusted_level():
    from mtspeech.evaluation.stats import seed_t_interval, verdict

    r = seed_t_interval([-0.05, -0.06, -0.04, -0.05])
    assert r.p_value < 0.05
    assert verdict(r, r.p_value) == "better"
    assert verdict(r, 0.2) == "no detectable effect at 4 seeds"
    assert verdict(r, 0.01, lower_is_better=False) == "worse"  # e.g. a drop in F1


def test_error_rate_intervals_stay_in_range():
    from mtspeech.evaluation.stats import clip_interval

    s = mean_std_ci([0.24, 0.97, 0.36])
    assert s.ci_low < 0
    assert clip_interval(s.ci_low, s.ci_high, (0.0, 1.0)) == (0.0, 1.0)
    assert clip_interval(-0.1, 0.2, None) == (-0.1, 0.2)


# ------------------------------------------------------------------ speaker_bootstrap

def test_speaker_bootstrap_of_two_speakers_spans_each_alone():
    """Speaker A: 1 error in 10 words; B: 9 in 10. A resample is AA (10 %), AB (50 %) or BB (90 %),
    AA and BB a quarter of the time each: the 95 % interval is exactly [10 %, 90 %]."""
    errors = [(1, 5), (0, 5), (4, 5), (5, 5)]
    result = speaker_bootstrap(errors, ["a", "a", "b", "b"], n_resamples=2000)
    assert result.rate == pytest.approx(0.5) and result.speakers == 2
    assert (result.ci_low, result.ci_high) == (pytest.approx(0.1), pytest.approx(0.9))
    assert result.delta is None and result.rate_b is None


def test_speaker_bootstrap_is_wider_than_utterances_when_voices_fail_together():
    """10 voices of 10 utterances; half the voices get every word wrong. Resampling utterances
    (each its own 'speaker') pretends 100 independent draws; resampling voices, 10."""
    errors = [(5 if spk < 5 else 0, 5) for spk in range(10) for _ in range(10)]
    by_voice = speaker_bootstrap(errors, [spk for spk in range(10) for _ in range(10)])
    by_utterance = speaker_bootstrap(errors, list(range(100)))
    assert by_voice.rate == by_utterance.rate == pytest.approx(0.5)
    assert by_voice.ci_high - by_voice.ci_low > 2 * (by_utterance.ci_high - by_utterance.ci_low)
    assert by_voice.ci_low < 0.5 < by_voice.ci_high


def test_speaker_bootstrap_pairs_two_systems_on_the_same_draws():
    errors_a = [(2, 5), (3, 5), (1, 4), (4, 6), (0, 3), (2, 4)]
    speakers = ["x", "x", "y", "y", "z", "z"]
    same = speaker_bootstrap(errors_a, speakers, errors_b=errors_a)
    assert (same.delta, same.delta_ci_low, same.delta_ci_high) == (0.0, 0.0, 0.0)
    assert (same.ci_low_b, same.ci_high_b) == (same.ci_low, same.ci_high)
    # B makes one error fewer on every utterance: better under every draw, so the whole interval is below 0
    better = speaker_bootstrap(errors_a, speakers, errors_b=[(max(e - 1, 0), n) for e, n in errors_a])
    assert better.delta == pytest.approx(better.rate_b - better.rate) and better.delta < 0
    assert better.delta_ci_high < 0


def test_speaker_bootstrap_rejects_mismatched_input():
    with pytest.raises(ValueError, match="2 utterances but 1 speaker labels"):
        speaker_bootstrap([(1, 2), (0, 2)], ["a"])
    with pytest.raises(ValueError, match="reference lengths differ"):
        speaker_bootstrap([(1, 2)], ["a"], errors_b=[(1, 3)])
    with pytest.raises(ValueError, match="no reference words"):
        speaker_bootstrap([(0, 0)], ["a"])
