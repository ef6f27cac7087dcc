"""Metrics against values computed by hand on small cases."""

import numpy as np
import pytest

from mtspeech.metrics import (
    ErrorCounts,
    _rank_auc,
    cer,
    equal_error_rate,
    frame_prf,
    make_trials,
    normalize_for_scoring,
    per,
    roc_auc,
    speaker_accuracy,
    utterance_word_errors,
    wer,
)


def test_normalization_librispeech_style():
    assert normalize_for_scoring("  Don’t stop, the well-known  man!\n") == "DON'T STOP THE WELL KNOWN MAN"
    assert normalize_for_scoring("...") == ""


def test_wer_counts_by_hand_and_sums_over_utterances():
    refs = ["the cat sat on the mat", "hello world", ""]
    hyps = ["The cat sit on mat.", "hello big world", "oops"]
    # utt 1: SAT->SIT (S), THE deleted (D): N=6; utt 2: BIG inserted: N=2; utt 3: 1 insertion, N=0
    per_utt = utterance_word_errors(refs, hyps)
    assert per_utt[0] == ErrorCounts(1, 1, 0, 6)
    assert per_utt[1] == ErrorCounts(0, 0, 1, 2)
    assert per_utt[2] == ErrorCounts(0, 0, 1, 0)
    total = wer(refs, hyps)
    assert total == ErrorCounts(1, 1, 2, 8)
    assert total.rate == pytest.approx(4 / 8)
    assert wer(["a b"], ["a b"]).rate == 0.0
    assert wer(["a b"], [""]) == ErrorCounts(0, 2, 0, 2)
    with pytest.raises(ValueError):
        wer(["a"], [])


def test_cer_by_hand():
    # "AB CD" vs "AB CE": 5 chars incl. the space, one substitution
    assert cer(["ab cd"], ["ab ce"]) == ErrorCounts(1, 0, 0, 5)
    # "AB" vs "A B": one inserted space
    assert cer(["ab"], ["a b"]) == ErrorCounts(0, 0, 1, 2)


def test_per_on_phone_lists():
    ref = [["HH", "AH", "L", "OW"], ["K", "AE", "T"]]
    hyp = [["HH", "EH", "L"], ["K", "AE", "T", "S"]]
    assert per(ref, hyp) == ErrorCounts(1, 1, 1, 7)
    assert per(ref, hyp).rate == pytest.approx(3 / 7)


def test_speaker_accuracy():
    assert speaker_accuracy(["a", "b", "b", "c"], ["a", "b", "c", "c"]) == 0.75


def test_equal_error_rate_by_hand():
    # separable: EER 0 at a threshold between the classes
    eer, thr = equal_error_rate([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert eer == 0.0 and 0.2 < thr <= 0.8
    # negatives 0.1 0.4 0.6 0.2, positives 0.5 0.7 0.3 0.9; at t=0.5: FAR 1/4 (0.6), FRR 1/4 (0.3)
    eer, thr = equal_error_rate([0.1, 0.4, 0.6, 0.2, 0.5, 0.7, 0.3, 0.9], [0, 0, 0, 0, 1, 1, 1, 1])
    assert eer == pytest.approx(0.25) and thr == pytest.approx(0.5)
    with pytest.raises(ValueError):
        equal_error_rate([0.1, 0.2], [1, 1])


def _eer_by_definition(s, y):
    thresholds = np.append(np.unique(s), np.inf)
    far = np.array([(s[~y] >= t).mean() for t in thresholds])
    frr = np.array([(s[y] < t).mean() for t in thresholds])
    i = int(np.argmin(np.abs(far - frr)))
    return (far[i] + frr[i]) / 2, thresholds[i]


def test_equal_error_rate_matches_its_definition_and_weights_repeat_trials():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(4, 40))
        s = np.round(rng.normal(size=n), 1)  # rounding makes ties, the delicate case
        y = rng.integers(0, 2, n).astype(bool)
        w = rng.integers(0, 4, n)
        if y.all() or not y.any() or not w[y].any() or not w[~y].any():
            continue
        eer, thr = equal_error_rate(s, y)
        want_eer, want_thr = _eer_by_definition(s, y)
        assert eer == pytest.approx(want_eer, abs=1e-12) and thr == want_thr
        assert equal_error_rate(s, y, w) == pytest.approx(equal_error_rate(np.repeat(s, w), np.repeat(y, w)))
    with pytest.raises(ValueError):
        equal_error_rate([0.1, 0.2, 0.3], [1, 0, 1], weights=[1, 0, 1])  # no non-target left


def test_make_trials_cosine_and_balance():
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0]])
    spk = ["a", "a", "b", "b", "c"]
    scores, labels = make_trials(emb, spk, max_trials=100, seed=0)
    assert len(scores) == 10 and labels.sum() == 2  # all C(5,2) pairs, 2 same-speaker
    assert np.allclose(np.sort(scores[labels == 1]), [1.0, 1.0])
    assert np.isclose(np.sort(scores[labels == 0])[0], 0.0)
    s2, l2 = make_trials(emb, spk, max_trials=4, seed=0)
    assert len(s2) == 4 and l2.sum() == 2
    assert equal_error_rate(scores, labels)[0] == 0.0


def test_frame_prf_by_hand():
    pred = [1, 1, 0, 0, 1, 0]
    ref = [1, 0, 0, 1, 1, 1]
    p, r, f = frame_prf(pred, ref)  # TP 2, FP 1, FN 2
    assert (p, r) == pytest.approx((2 / 3, 2 / 4))
    assert f == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert frame_prf([0, 0], [0, 0]) == (0.0, 0.0, 0.0)


def test_roc_auc_by_hand_and_rank_fallback_agrees():
    scores = [0.1, 0.4, 0.35, 0.8]
    labels = [0, 0, 1, 1]
    assert roc_auc(scores, labels) == pytest.approx(0.75)  # 3 of 4 pos/neg pairs ordered
    tied = np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1], dtype=bool)
    assert _rank_auc(*tied) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 50).astype(float), rng.integers(0, 2, 50).astype(bool)
    assert _rank_auc(s, y) == pytest.approx(roc_auc(s, y))
