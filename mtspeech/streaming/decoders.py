"""Token decoders of the streaming recognizer: the per-utterance search behind one small seam.

The recognizer (`mtspeech/streaming/recognizer.py`) owns features, the encoder and its cache, and
endpointing; what turns a head's log-probabilities into words lives here, so a decoder can be
swapped without touching the rest (torchaudio's streaming bundles split inference the same way).

    decoder = GreedyDecoder(table)              # or BeamDecoder(table, head="asr"|"phones", lm=...)
    utt = decoder.begin()                       # one per utterance
    utt.push(log_probs, first_frame)            # (T, V) log-softmax of the decoder's head, any T
    utt.partial()                               # Partial(words, stable, key) or None
    utt.end()                                   # Decoded(words with times, token ids)

Frames are absolute encoder frame indices of the stream; pushes of one utterance are
contiguous. Words carry times and a confidence by one scheme for every decoder: a word spans
[first frame of its first token, last frame of its last token + 1) x frame_shift_s, and its
confidence is the mean, over its tokens, of the token's highest posterior on the frames the
chosen CTC path gives it (for greedy that is what it always was).

Stable words (`Partial.stable`, a count of leading words):
  - greedy: every word but the last. Greedy CTC never revises an emitted token, and a word can
    only grow at its end (a later piece without "▁"); once a piece that starts a new word has
    been emitted, every word before it is final. So the stable prefix is guaranteed: it only
    extends, and the utterance's final text starts with it.
  - beam: the longest common word prefix of the current best hypothesis and the previous
    `stable_history` partial hypotheses, never counting the current last word. A heuristic:
    the beam may still revise such a prefix (rarely: all of the last hypotheses agreed on it),
    so for beam decoders the final text is not guaranteed to start with it. The recognizer
    never retracts a stable prefix it has sent (see `StreamingRecognizer._maybe_partial`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from mtspeech.alignment import TokenSpan, Word, align_tokens, ctc_runs, piece_groups, timed_words

log = logging.getLogger(__name__)

WORD_BOUNDARY = "\u2581"  # sentencepiece's "▁"


class TokenTable(Protocol):
    """What decoders need from a label table (mtspeech's Tokenizer, decoding.ctc.PhoneTable fit)."""

    def id_to_piece(self, i: int) -> str: ...


# One emitted CTC token, the frames (absolute, inclusive) the path gives it and the sum of the
# path label's posterior on them: the word-time scheme's own type (mtspeech/alignment.py).
Token = TokenSpan


@dataclass(frozen=True)
class Partial:
    """A partial hypothesis: `words`; the first `stable` of them will not change (see the module
    docstring for what each decoder guarantees); `key` changes whenever the hypothesis does."""

    words: tuple[str, ...]
    stable: int
    key: tuple


@dataclass(frozen=True)
class Decoded:
    """An utterance's result: words with absolute times (seconds) and the CTC token ids."""

    words: list[Word]
    tokens: tuple[int, ...]


class UtteranceDecoder(Protocol):
    """The search state of one utterance."""

    def push(self, log_probs: np.ndarray, first_frame: int) -> None:
        """log_probs (T, V) float32: log-softmax of the head for frames first_frame .. first_frame+T-1
        (a tensor works too; the recognizer hands numpy views of its batch)."""

    def partial(self) -> Partial | None:
        """The current hypothesis, or None while it has no token."""

    def end(self) -> Decoded:
        """No more frames: the utterance's words."""


class TokenDecoder(Protocol):
    """A decoder shared by all streams; `begin` makes the state of one utterance.

    `head`: the CTC head whose log-probs it reads (`"asr"` pieces or `"phones"`); `blank_id`
    the blank of that head's labels.
    """

    name: str
    head: str
    blank_id: int

    def begin(self) -> UtteranceDecoder: ...


# ----------------------------------------------------------------------------- word timing
# Times and confidences come from mtspeech/alignment.py's one scheme (`timed_words`), the code
# `mtspeech evaluate` uses too.


def _piece_groups(tokens: list[Token], table: TokenTable) -> list[tuple[str, list[Token]]]:
    """Group sentencepiece pieces into words ("▁" starts a word) → (text, tokens) per group;
    a group may have empty text (a lone "▁")."""
    groups: list[list[tuple[str, Token]]] = []
    for tok in tokens:
        piece = table.id_to_piece(tok.id)
        if piece.startswith(WORD_BOUNDARY) or not groups:
            groups.append([])
        groups[-1].append((piece, tok))
    return [("".join(p for p, _ in g).replace(WORD_BOUNDARY, ""), [t for _, t in g]) for g in groups]


def piece_words(tokens: list[Token], table: TokenTable, frame_shift_s: float) -> list[Word]:
    """Words of a piece sequence with times and confidences (mtspeech/alignment.py's scheme)."""
    return timed_words(tokens, piece_groups([t.id for t in tokens], table), frame_shift_s)


# ----------------------------------------------------------------------------- greedy


class GreedyDecoder:
    """Best path over the ASR head's pieces: argmax per frame, merge repeats, drop blanks."""

    name = "greedy"
    head = "asr"

    def __init__(self, table: TokenTable, blank_id: int, frame_shift_s: float):
        self.table, self.blank_id, self.frame_shift_s = table, blank_id, frame_shift_s
        self.options: dict = {}  # greedy has no setting (BeamDecoder.options has the beam's)

    def begin(self) -> "_GreedyUtterance":
        return _GreedyUtterance(self)


class _GreedyUtterance:
    def __init__(self, decoder: GreedyDecoder) -> None:
        self.d = decoder
        self.tokens: list[Token] = []
        self.prev_id = decoder.blank_id

    def push(self, log_probs: np.ndarray, first_frame: int) -> None:
        lp = np.asarray(log_probs, dtype=np.float32)
        best_id = lp.argmax(-1)
        best_prob = np.exp(np.take_along_axis(lp, best_id[:, None], -1)[:, 0])
        for token_id, first, last in ctc_runs(best_id):  # the one best-path collapse (alignment.py)
            if token_id != self.d.blank_id:
                if first == 0 and token_id == self.prev_id:  # the previous piece's run goes on
                    tok = self.tokens[-1]
                else:
                    tok = Token(token_id, first_frame + first, first_frame, 0.0)
                    self.tokens.append(tok)
                tok.last_frame = first_frame + last
                for p in best_prob[first : last + 1]:  # frame by frame, as offline alignment sums
                    tok.prob_sum += float(p)
            self.prev_id = token_id

    def partial(self) -> Partial | None:
        if not self.tokens:
            return None
        groups = _piece_groups(self.tokens, self.d.table)
        # every group but the last is closed: a later "▁" piece started the next one
        stable = sum(1 for text, _ in groups[:-1] if text)
        return Partial(tuple(text for text, _ in groups if text), stable, tuple(t.id for t in self.tokens))

    def end(self) -> Decoded:
        return Decoded(piece_words(self.tokens, self.d.table, self.d.frame_shift_s),
                       tuple(t.id for t in self.tokens))


# ----------------------------------------------------------------------------- beam (flashlight)


class BeamDecoder:
    """CTC prefix beam search, online: torchaudio's `CTCDecoder` (flashlight-text) driven with
    `decode_begin` / `decode_step` / `decode_end`, one search per utterance.

    `head="asr"`: over the ASR pieces, lexicon-free without an LM; with a word LM (ARPA) through
    a piece lexicon `lexicon` (`decoding.ctc.lexicon_for_lm` writes one from the LM's vocabulary).
    `head="phones"`: over the phone head, `lexicon` a phone lexicon (`decoding.lm.build_phone_lexicon`,
    CMUdict), an LM required. Options as `mtspeech.decoding.ctc.BeamSearchDecoder`, whose defaults
    are `DecodingConfig`'s: `decoding.loader.build_decoders` passes them, so none is repeated here
    (`beam_size` and the pruning `beam_threshold` have no default at all).
    The LM, the lexicon trie and the dictionaries are built once and shared by every stream;
    each utterance gets only a fresh search object. `options` holds the search's settings, so
    the offline decoder of `mtspeech evaluate` can be built with the very same ones.
    """

    def __init__(self, table, head: str, frame_shift_s: float, *, beam_size: int, beam_threshold: float,
                 lm: str | Path | None = None, lexicon: str | Path | None = None,
                 lm_weight: float | None = None, word_score: float = 0.0, stable_history: int = 3):
        from torchaudio.models.decoder import ctc_decoder  # needs flashlight-text

        if head not in ("asr", "phones"):
            raise ValueError(f"head={head!r}: expected 'asr' or 'phones'")
        if head == "phones" and (lm is None or lexicon is None):
            raise ValueError("the phones decoder needs a word LM and a phone lexicon (lm=, lexicon=)")
        if lm is not None and (lexicon is None or lm_weight is None):
            raise ValueError("a word LM needs a lexicon (decoding.ctc.lexicon_for_lm) and an lm_weight")
        lm_weight = lm_weight if lm is not None else 0.0
        self.name = "phones" if head == "phones" else "beam"
        self.head, self.table, self.frame_shift_s = head, table, frame_shift_s
        self.blank_id = 0
        self.stable_history = stable_history
        self.lexicon = None if lexicon is None else str(lexicon)
        self.options = {"beam_size": beam_size, "lm": None if lm is None else str(lm), "lexicon": self.lexicon,
                        "lm_weight": lm_weight, "word_score": word_score, "beam_threshold": beam_threshold}
        self.vocab_size = table.vocab_size
        pieces = [table.id_to_piece(i) for i in range(table.vocab_size)]
        blank = pieces[self.blank_id]
        # The same settings as the offline BeamSearchDecoder: blank doubles as silence.
        self._proto = ctc_decoder(
            lexicon=self.lexicon, tokens=pieces, lm=None if lm is None else str(lm), nbest=1,
            beam_size=beam_size, beam_threshold=beam_threshold,
            lm_weight=lm_weight, word_score=word_score,
            sil_token=blank, sil_score=0.0, blank_token=blank, unk_word="<unk>", log_add=False,
        )
        self._make_search = self._search_factory(beam_size, beam_threshold, lm_weight, word_score)
        self._lexicon_entries = None  # for hotwords: `lexicon_entries`

    def _search_factory(self, beam_size, beam_threshold, lm_weight, word_score):
        """A function returning a fresh flashlight search sharing the prototype's LM and trie.

        torchaudio builds the trie inside `ctc_decoder` and does not keep it, so it is built once
        more here with torchaudio's own helper; options mirror `ctc_decoder`'s.
        """
        from torchaudio.models.decoder import _ctc_decoder as T

        p = self._proto
        v = p.tokens_dict.index_size()
        if self.lexicon is None:
            opts = T._LexiconFreeDecoderOptions(
                beam_size=beam_size, beam_size_token=v, beam_threshold=beam_threshold, lm_weight=lm_weight,
                sil_score=0.0, log_add=False, criterion_type=T._CriterionType.CTC)
            return lambda: T._LexiconFreeDecoder(opts, p.lm, p.blank, p.blank, [])
        opts = T._LexiconDecoderOptions(
            beam_size=beam_size, beam_size_token=v, beam_threshold=beam_threshold, lm_weight=lm_weight,
            word_score=word_score, unk_score=-math.inf, sil_score=0.0, log_add=False,
            criterion_type=T._CriterionType.CTC)
        trie = T._construct_trie(p.tokens_dict, p.word_dict, T._load_words(self.lexicon), p.lm, p.blank)
        unk = p.word_dict.get_index("<unk>")
        return lambda: T._LexiconDecoder(opts, trie, p.lm, p.blank, p.blank, unk, [], False)

    def lexicon_entries(self):
        """The lexicon spelled in token ids with its unigram scores, built on the first stream
        with hotwords and kept (`streaming/biased_beam.py`)."""
        if self.lexicon is None:
            raise ValueError("a lexicon-free decoder has no lexicon")
        if self._lexicon_entries is None:
            from mtspeech.streaming.hotwords import LexiconEntries

            self._lexicon_entries = LexiconEntries(self)
        return self._lexicon_entries

    def word_name(self, search, word_id: int) -> str:
        """The word of a lexicon search's word id."""
        return search.word_dict.get_entry(word_id)

    def begin(self) -> "_BeamUtterance":
        search = copy.copy(self._proto)  # torchaudio's online API on a search of its own
        search.decoder = self._make_search()
        return _BeamUtterance(self, search)


class _BeamUtterance:
    def __init__(self, decoder: BeamDecoder, search) -> None:
        self.d, self.search = decoder, search
        self.first_frame: int | None = None
        self.frames = 0
        # the utterance's log-probs, for confidences of the tokens on the chosen path; bounded
        # by the endpointer's maximum utterance length
        self.log_probs: list[np.ndarray] = []
        self.history: deque[tuple[str, ...]] = deque(maxlen=decoder.stable_history)
        self.search.decode_begin()

    def push(self, log_probs: np.ndarray, first_frame: int) -> None:
        if self.first_frame is None:
            self.first_frame = first_frame
        lp = np.ascontiguousarray(log_probs, dtype=np.float32)
        # flashlight's own step on the array's memory (torchaudio's wrapper wants a tensor, and
        # every torch call releases and retakes the GIL: under load, waits of up to 5 ms each)
        self.search.decoder.decode_step(lp.ctypes.data, lp.shape[0], lp.shape[1])
        self.log_probs.append(lp)
        self.frames += lp.shape[0]

    def _best(self):
        # mid-utterance the best of the current beam: flashlight picks it in C++ (converting the
        # whole beam to Python, one path of the utterance's length per hypothesis, was a fifth
        # of a loaded server's GIL time)
        return self.search.decoder.get_best_hypothesis()

    def _path_tokens(self, result) -> tuple[np.ndarray, np.ndarray]:
        """The hypothesis' CTC path (one label per frame of this utterance) → its tokens' ids and
        the utterance-relative frame where each begins (a non-blank label unlike the one before)."""
        # torchaudio's path starts with flashlight's leading step (and decode_end adds one)
        path = np.asarray(result.tokens[1 : 1 + self.frames], dtype=np.int64)
        before = np.concatenate(([self.d.blank_id], path[:-1]))
        starts = np.flatnonzero((path != self.d.blank_id) & (path != before))
        return path[starts], starts

    def _groups(self, result, ids: np.ndarray, starts: np.ndarray) -> list[tuple[str, int]]:
        """The hypothesis' words as (text, number of its tokens), covering every token."""
        if self.d.lexicon is None:
            return piece_groups(ids.tolist(), self.d.table)
        # With a lexicon flashlight emits a word id on the frame its last token begins: the
        # tokens that begin before or on that frame (and after the previous word) spell it.
        words = np.asarray(result.words[1 : 1 + self.frames], dtype=np.int64)
        at = np.flatnonzero(words >= 0)
        ends = np.searchsorted(starts, at, side="right")  # tokens begun by each word's frame
        counts = np.diff(ends, prepend=0)
        groups = [(self.d.word_name(self.search, int(words[f])), int(n)) for f, n in zip(at, counts) if n > 0]
        groups.append(("", len(ids) - (int(ends[-1]) if len(ends) else 0)))  # no finished word: untimed
        return groups

    def partial(self) -> Partial | None:
        if not self.frames:
            return None
        best = self._best()
        ids, starts = self._path_tokens(best)
        # a partial carries no times: the words' texts are enough (with a lexicon, tokens of a
        # word not yet complete show nothing)
        texts = tuple(text for text, n in self._groups(best, ids, starts) if text and n)
        if not texts:
            return None
        stable = len(texts) - 1 if texts else 0  # the last word may still change
        for past in self.history:
            stable = min(stable, next((k for k, (a, b) in enumerate(zip(texts, past)) if a != b),
                                      min(len(texts), len(past))))
        if len(self.history) < self.history.maxlen:
            stable = 0  # too few hypotheses yet to call anything agreed
        self.history.append(texts)
        return Partial(texts, max(stable, 0), tuple(ids.tolist()) + texts)

    def end(self) -> Decoded:
        self.search.decode_end()
        if not self.frames:
            return Decoded([], ())
        results = self.search.decoder.get_all_final_hypothesis()
        if not results:
            return Decoded([], ())
        best = max(results, key=lambda r: r.score)
        ids, starts = self._path_tokens(best)
        groups = self._groups(best, ids, starts)
        # words timed on the tokens' Viterbi path, the one word-time scheme (mtspeech/alignment.py)
        log_probs = torch.from_numpy(np.concatenate(self.log_probs))
        tokens = align_tokens(log_probs, ids.tolist(), self.d.blank_id, self.first_frame)
        return Decoded(timed_words(tokens, groups, self.d.frame_shift_s), tuple(t.id for t in tokens))
