"""Evaluation metrics as pure functions: WER/CER/PER, speaker accuracy and EER, frame P/R/F1, AUC.

Error rates return `ErrorCounts` (S, D, I, N) rather than a bare ratio so that counts add
across utterances, batches and workers: the corpus rate is sum(S+D+I) / sum(N), not a
mean of per-utterance rates.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np


@dataclass(frozen=True)
class ErrorCounts:
    """Levenshtein alignment counts: substitutions, deletions, insertions, reference length.

    rate = (S + D + I) / N; N = 0 gives 0.0 when there are no errors and inf otherwise.
    """

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_len: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.ref_len

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.ref_len + other.ref_len,
        )


_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def normalize_for_scoring(text: str) -> str:
    """LibriSpeech-style scoring normalisation.

    Upper case; typographic apostrophes become "'" and are kept (DON'T stays one word);
    every other character that is not a letter, digit, apostrophe or space (punctuation,
    symbols, hyphens) becomes a space; whitespace runs collapse to one space, ends
    stripped. Digits are not spelled out (that belongs to the transcript normaliser,
    `mtspeech.text.normalize`, applied to both sides before training).
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).upper()
    text = "".join(c if (c.isalnum() or c == "'" or c.isspace()) else " " for c in text)
    return re.sub(r"\s+", " ", text).strip()


def _count(ref_words: list[str], hyp_words: list[str]) -> ErrorCounts:
    """Edit-distance counts of two token lists (tokens must contain no whitespace)."""
    if not ref_words:  # jiwer refuses empty references; everything is an insertion
        return ErrorCounts(0, 0, len(hyp_words), 0)
    if not hyp_words:
        return ErrorCounts(0, len(ref_words), 0, len(ref_words))
    out = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words))
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, len(ref_words))


def _check_pairs(refs: Sequence, hyps: Sequence) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")


def utterance_word_errors(refs: Sequence[str], hyps: Sequence[str]) -> list[ErrorCounts]:
    """Per-utterance word ErrorCounts after `normalize_for_scoring` (input for bootstrap tests)."""
    _check_pairs(refs, hyps)
    return [_count(normalize_for_scoring(r).split(), normalize_for_scoring(h).split()) for r, h in zip(refs, hyps)]


def wer(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Word error rate over a corpus: WER = sum(S + D + I) / sum(N_ref words).

    Both sides pass through `normalize_for_scoring`; `.rate` is the WER.
    """
    return sum(utterance_word_errors(refs, hyps), ErrorCounts())


def cer(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Character error rate: CER = sum(S + D + I) / sum(N_ref characters).

    Characters of the normalised text, single spaces between words included (as jiwer.cer).
    """
    _check_pairs(refs, hyps)
    total = ErrorCounts()
    for r, h in zip(refs, hyps):
        # spell characters as space-separated tokens; the word gap becomes a visible "_"
        chars = lambda s: list(normalize_for_scoring(s).replace(" ", "_"))  # noqa: E731
        total = total + _count(chars(r), chars(h))
    return total


def per(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> ErrorCounts:
    """Phone error rate: PER = sum(S + D + I) / sum(N_ref phones), edit distance on phone lists."""
    _check_pairs(refs, hyps)
    return sum((_count(list(r), list(h)) for r, h in zip(refs, hyps)), ErrorCounts())


def speaker_accuracy(predicted: Sequence, reference: Sequence) -> float:
    """Share of utterances whose predicted speaker equals the reference: correct / total."""
    _check_pairs(reference, predicted)
    if not reference:
        raise ValueError("speaker_accuracy of no utterances is undefined")
    return sum(p == r for p, r in zip(predicted, reference)) / len(reference)


def equal_error_rate(scores: Sequence[float], labels: Sequence[int],
                     weights: Sequence[float] | None = None) -> tuple[float, float]:
    """Equal error rate of verification trials and the threshold where it occurs.

    A trial is accepted when score >= threshold. FAR(t) = accepted non-targets / non-targets,
    FRR(t) = rejected targets / targets. Candidate thresholds are the observed scores
    (plus +inf, accept nothing); the EER is (FAR + FRR) / 2 at the threshold where
    |FAR - FRR| is smallest. labels: 1 = same speaker (target), 0 = different. `weights`
    count each trial that many times (a bootstrap's resampled trials); None: once each.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    if s.shape != y.shape or w.shape != s.shape or not w[y].sum() > 0 or not w[~y].sum() > 0:
        raise ValueError("equal_error_rate needs matching scores/labels with both target and non-target trials")
    s, y, w = s[w > 0], y[w > 0], w[w > 0]  # as if absent, so weights equal repetitions exactly
    thresholds = np.append(np.unique(s), np.inf)

    def weight_below(kind: np.ndarray) -> np.ndarray:  # weight of `kind` trials scoring < each threshold
        order = np.argsort(s[kind], kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(w[kind][order])])
        return cum[np.searchsorted(s[kind][order], thresholds, side="left")]

    targets, nontargets = w[y].sum(), w[~y].sum()
    frr = weight_below(y) / targets
    far = (nontargets - weight_below(~y)) / nontargets
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(thresholds[i])


def make_trials(
    embeddings: np.ndarray, speakers: Sequence[str], max_trials: int = 10_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Verification trials from pooled utterance embeddings (N, D).

    Returns (scores (M,), labels (M,)): cosine similarity of utterance pairs i < j and
    1 for same speaker / 0 for different. At most max_trials // 2 target and as many
    non-target pairs, sampled without replacement with `seed` (all pairs when fewer).
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    spk = np.asarray(speakers)
    if emb.ndim != 2 or len(emb) != len(spk):
        raise ValueError(f"embeddings must be (N, D) with N={len(spk)} speakers, got {emb.shape}")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    n, half = len(emb), max_trials // 2
    if n * (n - 1) // 2 <= 4_000_000:
        i, j = np.triu_indices(n, k=1)
    else:  # too many pairs to list: draw random ones (duplicates removed)
        i, j = rng.integers(0, n, size=(2, 8 * max_trials))
        keep = i < j
        pairs = np.unique(np.stack([i[keep], j[keep]], 1), axis=0)
        i, j = pairs[:, 0], pairs[:, 1]
    same = spk[i] == spk[j]
    chosen = []
    for mask in (same, ~same):
        idx = np.flatnonzero(mask)
        chosen.append(rng.choice(idx, size=min(half, len(idx)), replace=False) if len(idx) else idx)
    sel = np.concatenate(chosen)
    scores = np.einsum("md,md->m", emb[i[sel]], emb[j[sel]])
    return scores, same[sel].astype(np.int64)


def frame_prf(predicted: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """Frame-level precision, recall, F1 of a binary labelling (speech = 1).

    P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2PR / (P + R); a 0/0 ratio is 0.0.
    """
    p = np.asarray(predicted).astype(bool).ravel()
    r = np.asarray(reference).astype(bool).ravel()
    if p.shape != r.shape:
        raise ValueError(f"predicted has {p.size} frames, reference {r.size}")
    tp = int((p & r).sum())
    precision = tp / int(p.sum()) if p.any() else 0.0
    recall = tp / int(r.sum()) if r.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count 1/2.

    Uses scikit-learn when installed, else the rank (Mann-Whitney U) formula
    AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), average ranks for ties.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape or y.all() or not y.any():
        raise ValueError("roc_auc needs matching scores/labels with both classes present")
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        return _rank_auc(s, y)
    return float(roc_auc_score(y, s))


def _rank_auc(s: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    start = 0
    for end in range(1, len(s) + 1):  # average rank over each run of tied scores
        if end == len(s) or sorted_s[end] != sorted_s[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
