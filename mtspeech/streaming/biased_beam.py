"""A `BeamDecoder` biased towards one stream's hotwords (the method: `streaming/hotwords.py`).

    biased = BiasedBeamDecoder(rec.decoders["phones"], parse_hotwords([("quokka", 2.0)]))
    utt = biased.begin()        # as any TokenDecoder: push / partial / end
    rec.bias("phones", [("quokka", 2.0)])   # the same, through the recognizer's cache of lists

What a stream's hotwords cost, paid once per distinct hotword list (`BiasCache` keeps the last
few, so streams that share a list share its build), then per utterance:
- lexicon-free (pieces, no LM): a context graph of the phrases' pieces; per utterance a search
  whose LM is a Python object called for every piece a hypothesis adds;
- lexicon decoders: the lexicon trie rebuilt with the hotwords' lookahead raised (a pass over
  the lexicon, which `hotwords.LexiconEntries` spells in token ids once per server); per utterance a
  search whose LM, a Python wrapper of KenLM, is called once per new (history, word) pair.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

from mtspeech.data.g2p import pronounce
from mtspeech.streaming.decoders import BeamDecoder, _BeamUtterance
from mtspeech.streaming.hotwords import (MAX_NEW_WORDS, ContextGraph, Hotword, LexiconEntries, piece_bias, word_bias,
                                         word_boosts)


# A lexicon-free search calls its LM for every (hypothesis, piece) it extends, and the biased
# search's LM is Python: extending all V pieces a frame, as the unbiased search does in C++, would
# cost a 5000-piece model seconds a frame. It extends the frame's most likely pieces only; below
# this many pieces (the demo's 64 included) that is all of them, and the search is unchanged.
BIASED_PIECES_PER_FRAME = 64


class BiasedBeamDecoder:
    """`base`'s search with a bonus for `hotwords`; the `TokenDecoder` interface."""

    def __init__(self, base: BeamDecoder, hotwords: Sequence[Hotword]):
        from torchaudio.models.decoder import _ctc_decoder as T

        self.base, self.hotwords = base, tuple(hotwords)
        self.name, self.head, self.blank_id = base.name, base.head, base.blank_id
        self.table, self.frame_shift_s, self.stable_history = base.table, base.frame_shift_s, base.stable_history
        self.lexicon, self.options = base.lexicon, base.options
        self._T = T
        if base.lexicon is None:
            self.known_words, self.extra_words = 0, ()
            phrases = []
            for h in self.hotwords:
                ids = base.table.encode(" ".join(h.words))
                if ids:
                    phrases.append((ids, h.boost * len(h.words) / len(ids)))
            self.graph = ContextGraph(phrases)
            return
        lexicon = base.lexicon_entries()
        self.scoring = lexicon.scoring
        self.known_words = lexicon.scoring.known_words
        words = base._proto.word_dict
        ids: dict[str, int] = {}
        extra: list[str] = []
        for h in self.hotwords:
            for w in h.words:
                if w not in ids:
                    if words.contains(w):
                        ids[w] = words.get_index(w)
                    else:
                        ids[w] = self.known_words + len(extra)
                        extra.append(w)
        if len(extra) > MAX_NEW_WORDS:
            raise ValueError(f"hotwords: {len(extra)} words outside the decoder's lexicon (e.g. {extra[0]!r}); "
                             f"at most {MAX_NEW_WORDS} a list, each spelled for it (add more with --lexicon-extra)")
        self.extra_words = tuple(extra)
        self.graph = ContextGraph([([ids[w] for w in h.words], h.boost) for h in self.hotwords])
        self.trie = self._trie(lexicon, {ids[w]: b for w, b in word_boosts(self.hotwords).items()})

    def _trie(self, lexicon: LexiconEntries, boosts: dict[int, float]):
        """The lexicon trie with hotword words added (spelled in the head's units) and every
        hotword word's lookahead raised by its boost."""
        T, p, w = self._T, self.base._proto, self.scoring.lm_weight
        trie = T._Trie(p.tokens_dict.index_size(), p.blank)
        for idx, spelling, unigram in lexicon.entries:
            trie.insert(spelling, idx, w * unigram + boosts.get(idx, 0.0))
        back_off = lexicon.start_unk - self.scoring.unk_log10 + self.scoring.floor_log10
        for k, word in enumerate(self.extra_words):
            idx = self.known_words + k
            trie.insert(self._spell(word), idx, w * back_off + boosts[idx])
        trie.smear(T._SmearingMode.MAX)
        return trie

    def _spell(self, word: str) -> list[int]:
        """A word outside the lexicon in the head's token ids; ValueError if it cannot be."""
        tokens = self.base._proto.tokens_dict
        if self.head == "phones":
            phones = pronounce(word)
            missing = sorted(set(phones) - set(self.table.phones))
            if missing:
                raise ValueError(f"hotword {word!r}: spelled {' '.join(phones)}, but the model's phone head "
                                 f"has no {' '.join(missing)}")
            return [tokens.get_index(ph) for ph in phones]
        ids = self.table.encode(word)
        if not ids:
            raise ValueError(f"hotword {word!r}: the tokenizer spells it with no piece")
        return [tokens.get_index(self.table.id_to_piece(i)) for i in ids]

    def word_name(self, search, word_id: int) -> str:
        if word_id >= self.known_words and self.extra_words:
            return self.extra_words[word_id - self.known_words]
        return search.word_dict.get_entry(word_id)

    def begin(self) -> _BeamUtterance:
        T, b, p = self._T, self.base, self.base._proto
        o, v = b.options, p.tokens_dict.index_size()
        search = copy.copy(p)
        # the bias is the search's LM (weight 1): for lexicon searches it scales KenLM itself
        if self.lexicon is None:
            opts = T._LexiconFreeDecoderOptions(
                beam_size=o["beam_size"], beam_size_token=min(v, BIASED_PIECES_PER_FRAME),
                beam_threshold=o["beam_threshold"], lm_weight=1.0,
                sil_score=0.0, log_add=False, criterion_type=T._CriterionType.CTC)
            search.bias = piece_bias(self.graph)  # the Python LM must outlive the C++ search using it
            search.decoder = T._LexiconFreeDecoder(opts, search.bias, p.blank, p.blank, [])
        else:
            opts = T._LexiconDecoderOptions(
                beam_size=o["beam_size"], beam_size_token=v, beam_threshold=o["beam_threshold"], lm_weight=1.0,
                word_score=o["word_score"], unk_score=-math.inf, sil_score=0.0, log_add=False,
                criterion_type=T._CriterionType.CTC)
            search.bias = word_bias(self.scoring, self.graph)
            unk = p.word_dict.get_index("<unk>")
            search.decoder = T._LexiconDecoder(opts, self.trie, search.bias, p.blank, p.blank, unk, [], False)
        return _BeamUtterance(self, search)


class BiasCache:
    """The last `size` biased decoders by (decoder, hotword list): a server whose clients send
    the same list builds its trie once. Thread-safe (streams start on the event loop, tests and
    benchmarks anywhere)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._built: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, base: BeamDecoder, hotwords: tuple[Hotword, ...]) -> BiasedBeamDecoder:
        key = (id(base), hotwords)
        with self._lock:
            hit = self._built.get(key)
            if hit is not None and hit.base is base:
                self._built.move_to_end(key)
                return hit
        biased = BiasedBeamDecoder(base, hotwords)
        with self._lock:
            self._built[key] = biased
            while len(self._built) > self.size:
                self._built.popitem(last=False)
        return biased
