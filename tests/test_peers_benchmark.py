"""benchmarks/peers.py's pure parts: the mapping of detector frames onto 10 ms scoring frames,
the all-pairs speaker trials and the speaker bootstrap (no peer package needed)."""

import numpy as np
import pytest
from bench_module import load_benchmark

from mtspeech import metrics as M
from mtspeech.tasks.vad import frame_centres_s

peers = load_benchmark("peers")


def test_segment_frames_marks_10ms_frames_whose_centre_is_inside():
    # centres 5, 15, 25, 35, 45 ms; [0, 25 ms) holds the first two, [30, 40 ms) the fourth
    assert peers.segment_frames([[0.0, 0.025], [0.030, 0.040]], 5).tolist() == [True, True, False, True, False]
    assert not peers.segment_frames([], 3).any()


def test_nearest_frames_takes_the_detector_frame_nearest_each_10ms_centre():
    # detector frames centred at 20 and 60 ms: the 10 ms centres 5..35 ms are nearer 20, 45..75 nearer 60
    mapped = peers.nearest_frames(np.array([0.02, 0.06]), np.array([True, False]), 8)
    assert mapped.tolist() == [True] * 4 + [False] * 4
    # 10 ms frames past the detector's last centre take its last decision
    assert peers.nearest_frames(np.array([0.02, 0.06]), np.array([False, True]), 12).tolist() == [False] * 4 + [True] * 8
    assert peers.nearest_frames(np.array([0.5]), np.array([True]), 3).tolist() == [True] * 3  # one frame: everywhere
    assert not peers.nearest_frames(np.array([]), np.array([]), 4).any()


def test_head_frames_mapped_to_10ms_agree_with_the_segments_away_from_the_edges():
    """The head's 40 ms frames, labelled from the segments at their centres, then mapped to 10 ms:
    every 10 ms frame more than half a head frame (20 ms) from a segment edge gets the truth."""
    speech, seconds = [[0.31, 0.87], [1.20, 1.93]], 2.5
    n_10ms = int(seconds * 100)
    centres = frame_centres_s(int(seconds / 0.04) - 2).numpy()
    head = np.zeros(len(centres), dtype=bool)
    for start, end in speech:
        head |= (centres >= start) & (centres < end)
    mapped = peers.nearest_frames(centres, head, n_10ms)
    truth = peers.segment_frames(speech, n_10ms)
    t = (np.arange(n_10ms) + 0.5) / 100
    edges = np.array([x for seg in speech for x in seg])
    far = np.abs(t[:, None] - edges[None]).min(1) > 0.02
    assert (mapped[far] == truth[far]).all()
    assert (mapped != truth).sum() <= 4 * len(edges)  # disagreement only near the 4 edges


def test_all_pair_trials_scores_every_pair_once():
    emb = [np.array([1.0, 0.0]), np.array([3.0, 0.0]), np.array([0.0, 2.0]), np.array([1.0, 1.0])]
    scores, same, a, b, n = peers.all_pair_trials(emb, ["x", "x", "y", "y"])
    # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    assert scores == pytest.approx([1.0, 0.0, 2 ** -0.5, 0.0, 2 ** -0.5, 2 ** -0.5])
    assert same.tolist() == [True, False, False, False, False, True] and n == 2
    assert a.tolist() == [0, 0, 0, 0, 0, 1] and b.tolist() == [0, 1, 1, 1, 1, 1]


def _trials(seed: int, n_speakers: int = 6, per_speaker: int = 3, noise: float = 0.6):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_speakers, 8))
    emb = [centres[s] + noise * rng.standard_normal(8) for s in range(n_speakers) for _ in range(per_speaker)]
    return peers.all_pair_trials(emb, [f"s{s}" for s in range(n_speakers) for _ in range(per_speaker)])


def test_speaker_bootstrap_weights_equal_repeating_the_resampled_trials():
    """Each resample, rebuilt by hand as a repeated trial list (a same-speaker trial once per draw
    of its speaker, a different-speaker trial once per pair of draws), gives the same EERs."""
    good, labels, a, b, n = _trials(0, noise=0.3)
    bad = _trials(0, noise=1.5)[0]
    result = peers.speaker_bootstrap({"good": good, "bad": bad}, labels, a, b, n, samples=30, seed=3)
    rng = np.random.default_rng(3)
    draws = {"good": [], "bad": []}
    for _ in range(30):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        repeats = [counts[a[m]] if labels[m] else counts[a[m]] * counts[b[m]] for m in range(len(labels))]
        idx = np.repeat(np.arange(len(labels)), repeats)
        if labels[idx].all() or not labels[idx].any():
            continue
        for name, scores in (("good", good), ("bad", bad)):
            draws[name].append(M.equal_error_rate(scores[idx], labels[idx])[0])
    assert result["samples"] == len(draws["good"])
    for name in draws:
        assert result[f"{name}_eer_ci95"] == pytest.approx(np.percentile(draws[name], [2.5, 97.5]), abs=1e-4)
    diff = np.subtract(draws["good"], draws["bad"])
    assert result["difference"] == "good - bad"
    assert result["difference_ci95"] == pytest.approx(np.percentile(diff, [2.5, 97.5]), abs=1e-4)


def test_speaker_bootstrap_separates_a_clear_difference_and_not_a_null_one():
    good, labels, a, b, n = _trials(1, n_speakers=10, noise=0.2)
    bad = _trials(1, n_speakers=10, noise=2.0)[0]
    clear = peers.speaker_bootstrap({"good": good, "bad": bad}, labels, a, b, n, samples=200)
    assert clear["difference_ci95"][1] < 0  # good's EER is lower in 97.5 % of resamples
    same = peers.speaker_bootstrap({"x": bad, "y": bad.copy()}, labels, a, b, n, samples=200)
    assert same["difference_ci95"] == [0.0, 0.0]
    assert same["x_eer_ci95"][0] < M.equal_error_rate(bad, labels)[0] < same["x_eer_ci95"][1]


def test_speaker_bootstrap_skips_draws_with_a_single_speaker():
    """Two speakers: a draw of the same speaker twice (half of them) has no different-speaker trial."""
    scores, labels, a, b, n = _trials(2, n_speakers=2)
    result = peers.speaker_bootstrap({"p": scores, "q": scores}, labels, a, b, n, samples=400)
    assert 120 < result["samples"] < 280
