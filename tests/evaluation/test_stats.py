"""Seed summaries and the paired bootstrap."""

import math

import numpy as np
import pytest

from mtspeech.evaluation.stats import mean_std_ci, paired_bootstrap


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
