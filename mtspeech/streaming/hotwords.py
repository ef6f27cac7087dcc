"""Per-stream hotwords: contextual biasing of the beam decoders (icefall's ContextGraph idea).

A stream may carry hotwords, `[("quokka", 2.0), ("new york", 1.5)]`: phrases whose words get a
score bonus (`boost`, in the decoder's natural-log score units, per word of the phrase) while a
hypothesis spells them. The phrases form a prefix trie with Aho-Corasick failure links
(`ContextGraph`), walked one unit at a time beside each hypothesis: a unit that extends a
partial match earns the bonus; a unit that breaks the match takes back what the unfinished
phrase had earned (so a hypothesis that only starts a hotword gains nothing), and finishing
the utterance inside a partial match takes it back too. A completed phrase keeps its bonus.

Where the walk happens depends on the search (flashlight, through torchaudio's `CTCDecoderLM`,
a language model written in Python):

- **beam over pieces, no word LM** (lexicon-free): `PieceBias` is the whole LM; units are the
  phrase's sentencepiece pieces, each worth `boost * words / pieces`, so a completed phrase
  earns `boost * words` as in the word decoders. Any phrase can be spelled in pieces.
- **lexicon decoders** (pieces with a word LM, or phones): `WordBias` wraps the server's KenLM
  model; units are words. A hotword word outside the lexicon gets a word id of its own for this
  stream, is spelled in the head's units (pieces by the tokenizer; phones by CMUdict, else the
  G2P model, `data/g2p.py`) and is scored by the unigram back-off of `decoding/vocabulary.py`
  (the LM's rarest word) in whatever context. The lexicon trie is rebuilt for the stream with
  each hotword word's lookahead score raised by its boost: without that, a rare word would
  be pruned while it is being spelled, before the bonus at its end could save it.

Streams without hotwords keep the shared C++ search untouched: biasing costs nothing unless used.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from mtspeech.text.normalize import normalize_text

# Bounds of a stream's hotword list (the server's protocol applies the same ones): a list and
# a phrase a person would type, far below what would slow a search or a trie rebuild.
MAX_HOTWORDS = 1000
MAX_PHRASE_CHARS = 100
MAX_PHRASE_WORDS = 10
MAX_BOOST = 20.0
# Words outside a lexicon decoder's lexicon in one list: each is spelled for the list, by the G2P
# model for a word CMUdict lacks (tens of ms a word on one core), so this bounds a list's build.
MAX_NEW_WORDS = 100
DEFAULT_BOOST = 2.0


@dataclass(frozen=True)
class Hotword:
    """A normalised phrase (upper-case words, as transcripts are) and its bonus per word."""

    words: tuple[str, ...]
    boost: float


def phrase_words(phrase: str) -> tuple[str, ...]:
    """A hotword phrase's normalised words (upper case, numbers spelled, as transcripts are).

    Raises ValueError saying what is wrong: not text, blank, over `MAX_PHRASE_CHARS`, a control
    or unassigned character, no word once normalised, over `MAX_PHRASE_WORDS` words.
    """
    if not isinstance(phrase, str) or not phrase.strip():
        raise ValueError("empty; give a word or a phrase")
    if len(phrase) > MAX_PHRASE_CHARS:
        raise ValueError(f"{len(phrase)} characters; at most {MAX_PHRASE_CHARS}")
    if any(unicodedata.category(c).startswith("C") for c in phrase):
        raise ValueError("holds a control or unassigned character")
    words = tuple(normalize_text(phrase).split())
    if not words:
        raise ValueError(f"{phrase!r} holds no word once normalised")
    if len(words) > MAX_PHRASE_WORDS:
        raise ValueError(f"{len(words)} words; at most {MAX_PHRASE_WORDS}")
    return words


def parse_hotwords(items: Sequence[tuple[str, float]]) -> tuple[Hotword, ...]:
    """(phrase, boost) pairs → normalised `Hotword`s (duplicates keep their highest boost).

    Raises ValueError naming the entry: too many entries, a phrase `phrase_words` refuses, a
    boost outside (0, MAX_BOOST].
    """
    if len(items) > MAX_HOTWORDS:
        raise ValueError(f"hotwords: {len(items)} entries; at most {MAX_HOTWORDS}")
    best: dict[tuple[str, ...], float] = {}
    for i, (phrase, boost) in enumerate(items):
        try:
            words = phrase_words(phrase)
        except ValueError as e:
            raise ValueError(f"hotwords[{i}].phrase: {e}") from None
        if isinstance(boost, bool) or not isinstance(boost, (int, float)) or not 0 < boost <= MAX_BOOST:
            raise ValueError(f"hotwords[{i}].boost: {boost!r}; expected a number in (0, {MAX_BOOST}]")
        best[words] = max(best.get(words, 0.0), float(boost))
    return tuple(Hotword(w, b) for w, b in best.items())


class ContextGraph:
    """Phrases of units (word or piece ids) in a trie with failure links; node 0 is the root.

    `score[n]`: the bonus a hypothesis has earned on reaching node n from the root; `kept[n]`:
    the part of it that is settled (the score of the deepest completed phrase on n's path).
    """

    def __init__(self, phrases: Sequence[tuple[Sequence[int], float]]):
        self.children: list[dict[int, int]] = [{}]
        self.score, self.kept, self.end = [0.0], [0.0], [False]
        for units, bonus in phrases:  # bonus per unit
            node = 0
            for u in units:
                nxt = self.children[node].get(u)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][u] = nxt
                    self.children.append({})
                    self.score.append(self.score[node] + bonus)
                    self.kept.append(0.0)
                    self.end.append(False)
                else:  # a prefix shared by phrases: the higher bonus
                    self.score[nxt] = max(self.score[nxt], self.score[node] + bonus)
                node = nxt
            if units:
                self.end[node] = True
        self.fail = [0] * len(self.children)
        queue = [0]
        for n in queue:  # breadth first: parents (and shorter suffixes) before their children
            for u, c in self.children[n].items():
                self.kept[c] = self.score[c] if self.end[c] else self.kept[n]
                f = self.fail[n]
                while f and u not in self.children[f]:
                    f = self.fail[f]
                self.fail[c] = self.children[f][u] if n and u in self.children[f] else 0
                queue.append(c)

    def step(self, node: int, unit: int) -> tuple[int, float]:
        """The node after `unit` and the bonus for it (negative: an unfinished match taken back)."""
        nxt = self.children[node].get(unit)
        if nxt is not None:
            return nxt, self.score[nxt] - self.score[node]
        if node == 0:
            return 0, 0.0
        n = self.fail[node]
        while n and unit not in self.children[n]:
            n = self.fail[n]
        nxt = self.children[n].get(unit, 0)
        return nxt, self.score[nxt] - (self.score[node] - self.kept[node])

    def finish(self, node: int) -> float:
        """The bonus taken back when the utterance ends at `node` (an unfinished match)."""
        return self.kept[node] - self.score[node]


def _lm_classes():
    from torchaudio.models.decoder import CTCDecoderLM, CTCDecoderLMState

    return CTCDecoderLM, CTCDecoderLMState


def piece_bias(graph: ContextGraph):
    """A lexicon-free search's LM: the context graph over pieces and nothing else (a fresh one
    per utterance: its states live as long as the utterance's search)."""
    CTCDecoderLM, CTCDecoderLMState = _lm_classes()

    class PieceBias(CTCDecoderLM):
        # One state per graph node: hypotheses at the same node merge as under flashlight's
        # zero LM, so a search whose pieces never touch a hotword is the unbiased one.
        def __init__(self) -> None:
            super().__init__()
            self.root = CTCDecoderLMState()
            self.states = [self.root]
            self.node_of = {self.root: 0}

        def _state(self, node: int):
            while len(self.states) <= node:
                s = self.root.child(len(self.states))
                self.node_of[s] = len(self.states)
                self.states.append(s)
            return self.states[node]

        def start(self, start_with_nothing: bool):
            return self.root

        def score(self, state, token: int):
            nxt, bonus = graph.step(self.node_of[state], token)
            return self._state(nxt), bonus

        def finish(self, state):
            return state, graph.finish(self.node_of[state])

    return PieceBias()


@dataclass(frozen=True)
class WordScoring:
    """How `word_bias` scores words: the server's KenLM `lm` (word ids of its dictionary below
    `known_words`), its weight, `<unk>`'s id, and the back-off of words added for a stream:
    log10 p(w | h) = [KenLM's log10 p(<unk> | h) - `unk_log10`] + `floor_log10`."""

    lm: object
    lm_weight: float
    known_words: int
    unk_id: int
    unk_log10: float
    floor_log10: float


def word_bias(scoring: WordScoring, graph: ContextGraph):
    """A lexicon search's LM: `lm_weight` x KenLM + the context graph's bonus over word ids
    (the search itself runs with LM weight 1). A fresh one per utterance."""
    CTCDecoderLM, CTCDecoderLMState = _lm_classes()
    lm, w = scoring.lm, scoring.lm_weight
    FINISH = -1

    class WordBias(CTCDecoderLM):
        # Our state for a word history is parent.child(word): the same object for the same
        # history, which is when flashlight merges KenLM's own states too. `info` maps it to
        # (KenLM state, graph node, score of its last word): flashlight asks for the same
        # word after the same history on every frame, so each is computed once.
        def __init__(self) -> None:
            super().__init__()
            self.info: dict = {}

        def start(self, start_with_nothing: bool):
            root = CTCDecoderLMState()
            self.info[root] = (lm.start(start_with_nothing), 0, 0.0)
            return root

        def score(self, state, word: int):
            out = state.child(word)
            known = self.info.get(out)
            if known is None:
                ken, node, _ = self.info[state]
                if word < scoring.known_words:
                    ken, log10 = lm.score(ken, word)
                else:  # a word added for this stream: the unigram back-off
                    ken, log10 = lm.score(ken, scoring.unk_id)
                    log10 += scoring.floor_log10 - scoring.unk_log10
                node, bonus = graph.step(node, word)
                known = self.info[out] = (ken, node, w * log10 + bonus)
            return out, known[2]

        def finish(self, state):
            out = state.child(FINISH)
            known = self.info.get(out)
            if known is None:
                ken, node, _ = self.info[state]
                ken, log10 = lm.finish(ken)
                known = self.info[out] = (ken, node, w * log10 + graph.finish(node))
            return out, known[2]

    return WordBias()


class LexiconEntries:
    """A lexicon `BeamDecoder`'s words once: (word id, spelling in token ids, log10 unigram from
    <s>), and the scoring of words a stream adds (`WordScoring`)."""

    def __init__(self, base):
        from torchaudio.models.decoder import _ctc_decoder as T

        p = base._proto
        lm = p.lm
        start, null = lm.start(False), lm.start(True)
        self.entries = []
        for word, spellings in T._load_words(base.lexicon).items():
            idx = p.word_dict.get_index(word)
            unigram = lm.score(start, idx)[1]
            for spelling in spellings:
                self.entries.append((idx, [p.tokens_dict.get_index(t) for t in spelling], unigram))
        unk = p.word_dict.get_index("<unk>")
        unk_log10 = lm.score(null, unk)[1]
        # the rarest lexicon word the LM lists (a lexicon word the LM lacks scores exactly as <unk>)
        listed = [s for s in (lm.score(null, i)[1] for i in {e[0] for e in self.entries}) if s != unk_log10]
        self.scoring = WordScoring(lm, base.options["lm_weight"], p.word_dict.index_size(), unk,
                                   unk_log10, min(listed, default=unk_log10))
        self.start_unk = lm.score(start, unk)[1]  # a stream word's lookahead: back-off from <s>


def word_boosts(hotwords: Sequence[Hotword]) -> dict[str, float]:
    """Each hotword word's highest boost: what its lookahead score in the lexicon trie gains."""
    out: dict[str, float] = {}
    for h in hotwords:
        for word in h.words:
            out[word] = max(out.get(word, 0.0), h.boost)
    return out

