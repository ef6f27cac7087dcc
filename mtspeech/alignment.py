"""CTC paths, below every decoder: the one best-path collapse and the one word-time scheme.

Everything that turns a CTC path into tokens or timed words reads it from here: the CTC
task's greedy metrics (`tasks/ctc.py`), the offline decoders of `mtspeech evaluate`
(`decoding/ctc.py`) and the streaming token decoders of the server (`streaming/decoders.py`).
It imports nothing of the package, so those three floors can all stand on it.

Word times, ONE scheme for `mtspeech evaluate` and the server's streaming decoders alike:
  1. the CTC path of the decoded tokens: their Viterbi alignment to the log-probs
     (`align_tokens`; the greedy path needs no call: it is its own Viterbi alignment, since
     the best of all paths is also the best of those that spell its tokens);
  2. a token spans the frames the path gives it; a word spans [first frame of its first
     token, last frame of its last token + 1) x frame_shift_s (`timed_words`);
  3. a word's confidence is the mean over its tokens of the token's mean posterior (of the
     path's label) on its frames.
Its error against exact word boundaries: benchmarks/word_times.py, stated in docs/server.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLANK_ID = 0
WORD_START = "\u2581"  # sentencepiece's "▁"


@dataclass(frozen=True)
class Word:
    """A recognised word with its time span in seconds and a confidence in [0, 1]."""

    word: str
    start: float
    end: float
    confidence: float


def ctc_runs(path: torch.Tensor | np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal labels in a best path (T,) int: (label, first frame, last frame), in order.

    The package's one CTC best-path collapse: a non-blank run is one emitted token, and blanks
    are what separate a repeated label. The offline `GreedyDecoder`, the CTC task's greedy
    metrics (`greedy_tokens`) and the streaming greedy decoder all read their tokens off it.
    """
    if isinstance(path, np.ndarray):  # the streaming decoders' per-stream path: no torch op
        if path.size == 0:
            return []
        last = np.flatnonzero(np.diff(path)).tolist() + [len(path) - 1]
        first = [0] + [k + 1 for k in last[:-1]]
        return list(zip(path[last].tolist(), first, last))
    if path.numel() == 0:
        return []
    values, counts = torch.unique_consecutive(path.cpu(), return_counts=True)
    last = counts.cumsum(0) - 1
    return list(zip(values.tolist(), (last - counts + 1).tolist(), last.tolist()))


def greedy_tokens(path: torch.Tensor, blank_id: int = BLANK_ID) -> list[int]:
    """The tokens a best path (T,) emits: its non-blank runs."""
    return [label for label, _, _ in ctc_runs(path) if label != blank_id]


@dataclass
class TokenSpan:
    """A token on a CTC path: frames `first_frame`..`last_frame` (inclusive, absolute) and the
    sum of the path label's posterior over them (`confidence` is their mean)."""

    id: int
    first_frame: int
    last_frame: int
    prob_sum: float

    @property
    def confidence(self) -> float:
        return self.prob_sum / (self.last_frame - self.first_frame + 1)


def path_tokens(path: list[int], probs: list[float], blank_id: int = BLANK_ID, first_frame: int = 0) -> list[TokenSpan]:
    """A CTC path (one label per frame) and each frame's posterior of its label → the emitted
    tokens with their frames; frame t of the path is absolute frame `first_frame + t`."""
    tokens: list[TokenSpan] = []
    prev = blank_id
    for t, (label, prob) in enumerate(zip(path, probs)):
        if label != blank_id:
            if label == prev:  # CTC: a repeat without a blank in between continues the token
                tokens[-1].last_frame = first_frame + t
                tokens[-1].prob_sum += prob
            else:
                tokens.append(TokenSpan(label, first_frame + t, first_frame + t, prob))
        prev = label
    return tokens


def align_tokens(log_probs: torch.Tensor, tokens: list[int], blank_id: int = BLANK_ID,
                 first_frame: int = 0) -> list[TokenSpan]:
    """The Viterbi CTC path of `tokens` through log_probs (T, V) (`torchaudio.functional.
    forced_align`), as `path_tokens`. Raises ValueError if the frames cannot hold the tokens."""
    import torchaudio.functional as F

    if not tokens:
        return []
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be (T, V) for one utterance, got {tuple(log_probs.shape)}")
    emissions = log_probs.detach().to("cpu", torch.float32)[None]
    repeats = sum(a == b for a, b in zip(tokens, tokens[1:]))
    if emissions.shape[1] < len(tokens) + repeats:
        raise ValueError(f"{emissions.shape[1]} frames cannot hold {len(tokens)} CTC tokens ({repeats} repeats)")
    alignment, scores = F.forced_align(emissions, torch.tensor([tokens], dtype=torch.int32), blank=blank_id)
    out = path_tokens(alignment[0].tolist(), scores[0].exp().tolist(), blank_id, first_frame)
    if [t.id for t in out] != list(tokens):  # forced_align fails loudly on impossible inputs; guard anyway
        raise RuntimeError(f"alignment spells {len(out)} tokens, not the {len(tokens)} asked for")
    return out


def piece_groups(token_ids: list[int], table) -> list[tuple[str, int]]:
    """Sentencepiece tokens → words as (text, number of tokens); "▁" starts a word. A group
    whose text is empty (a lone "▁") is kept, so the counts still add up to the tokens."""
    groups: list[list[str]] = []
    for i in token_ids:
        piece = table.id_to_piece(i)
        if piece.startswith(WORD_START) or not groups:
            groups.append([])
        groups[-1].append(piece)
    return [("".join(g).replace(WORD_START, ""), len(g)) for g in groups]


def timed_words(tokens: list[TokenSpan], groups: list[tuple[str, int]], frame_shift_s: float) -> list[Word]:
    """Words with times (seconds, 3 decimals) and confidences from their tokens: `groups` gives
    each word's text and token count, in order; words with empty text are left out."""
    if sum(n for _, n in groups) != len(tokens):
        raise ValueError(f"word groups cover {sum(n for _, n in groups)} tokens, not {len(tokens)}")
    words, i = [], 0
    for text, n in groups:
        toks, i = tokens[i : i + n], i + n
        if text and toks:
            words.append(Word(word=text, start=round(toks[0].first_frame * frame_shift_s, 3),
                              end=round((toks[-1].last_frame + 1) * frame_shift_s, 3),
                              confidence=round(sum(t.confidence for t in toks) / len(toks), 4)))
    return words


def word_alignments(
    log_probs: torch.Tensor,
    tokens: list[int],
    tokenizer: Tokenizer,
    frame_shift_s: float,
    blank_id: int = BLANK_ID,
) -> list[Word]:
    """Word times of one utterance's decoded sentencepiece `tokens` by the one scheme above:
    log_probs (T, V) log-posteriors of its valid frames."""
    spans = align_tokens(log_probs, tokens, blank_id)
    return timed_words(spans, piece_groups(tokens, tokenizer), frame_shift_s)
