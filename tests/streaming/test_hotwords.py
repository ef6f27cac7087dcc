"""Per-stream hotwords (mtspeech/streaming/hotwords.py, biased_beam.py): the context graph's
bonuses and take-backs, hostile lists refused, and each beam decoder writing a boosted word the
acoustics make a close second (or one outside its lexicon) only when boosted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtspeech.decoding.config import DecodingConfig
from mtspeech.decoding.ctc import PhoneTable
from mtspeech.decoding.lm import build_ngram_lm
from mtspeech.streaming.biased_beam import BiasCache, BiasedBeamDecoder
from mtspeech.streaming.decoders import BeamDecoder
from mtspeech.streaming.hotwords import MAX_HOTWORDS, ContextGraph, parse_hotwords
from tiny_asr import PIECES, PieceTable, longest_match_ids, signal, tiny_recognizer

PRUNE = DecodingConfig.beam_threshold  # the served beam pruning

torch.set_num_threads(1)

PHONES = ["AE", "AH", "B", "D", "K", "S", "T"]
PHONE_LEXICON = {"CAT": "K AE T", "BAD": "B AE D", "TAB": "T AE B", "SAT": "S AE T", "A": "AH", "DUST": "D AH S T"}
SENTENCES = ["CAT SAT", "A BAD CAT", "TAB DUST A", "SAT A CAT", "A CAT SAT"]


class Pieces(PieceTable):
    """PIECES with the size, decoding and (longest match) encoding the beam decoders use."""

    vocab_size = len(PIECES)

    def decode(self, ids):
        return "".join(PIECES[i] for i in ids).replace("\u2581", " ").strip()

    def encode(self, text):
        return longest_match_ids(text, PIECES)


# ----------------------------------------------------------------------------- the context graph


def test_graph_gives_the_bonus_per_unit_and_keeps_a_completed_phrase():
    g = ContextGraph([([1, 2, 3], 1.0), ([1, 2], 0.5)])  # shared prefix: the higher bonus
    n, b1 = g.step(0, 1)
    n, b2 = g.step(n, 2)
    n, b3 = g.step(n, 3)
    assert (b1, b2, b3) == (1.0, 1.0, 1.0)
    assert g.step(n, 9) == (0, 0.0) and g.finish(n) == 0.0  # completed: nothing taken back


def test_graph_takes_back_an_unfinished_match():
    g = ContextGraph([([1, 2, 3], 1.0)])
    n, _ = g.step(0, 1)
    n, _ = g.step(n, 2)
    assert g.step(n, 7) == (0, -2.0)  # broken after two units
    assert g.finish(n) == -2.0  # the utterance ended inside it
    n2, b = g.step(n, 1)  # broken by a unit that starts the phrase again
    assert (n2, b) == (g.step(0, 1)[0], -1.0)


def test_graph_keeps_a_shorter_phrase_completed_inside_a_longer_one():
    g = ContextGraph([([1, 2], 1.0), ([1, 2, 3, 4], 1.0)])
    n = 0
    for u in (1, 2, 3):
        n, _ = g.step(n, u)
    assert g.finish(n) == -1.0  # only unit 3 is taken back: "1 2" was a phrase of its own
    assert g.step(n, 8)[1] == -1.0


def test_graph_follows_failure_links_to_a_suffix_match():
    g = ContextGraph([([1, 2, 3], 1.0), ([2, 5], 1.0)])
    n, _ = g.step(0, 1)
    n, _ = g.step(n, 2)
    n, b = g.step(n, 5)  # "1 2" breaks, but "2 5" matched meanwhile: -2 back, +2 for "2 5"
    assert b == 0.0 and g.finish(n) == 0.0


# ----------------------------------------------------------------------------- hostile lists


@pytest.mark.parametrize("items, error", [
    ([("A", 1.0)] * (MAX_HOTWORDS + 1), "entries; at most"),
    ([("x" * 1_000_000, 1.0)], "characters; at most"),
    ([("BAD\x00CAT", 1.0)], "control"),
    ([("BAD\u202eCAT", 1.0)], "control"),
    ([("", 1.0)], "empty"),
    ([("   ", 1.0)], "empty"),
    ([("!!!", 1.0)], "no word once normalised"),
    ([("CAT", 0.0)], "boost"),
    ([("CAT", float("nan"))], "boost"),
    ([("CAT", 1e9)], "boost"),
    ([("CAT", True)], "boost"),
    ([(" ".join(["CAT"] * 11), 1.0)], "words; at most"),
])
def test_hostile_hotword_lists_are_refused_naming_the_entry(items, error):
    with pytest.raises(ValueError, match=error):
        parse_hotwords(items)


def test_phrases_are_normalised_and_duplicates_keep_the_highest_boost():
    hot = parse_hotwords([("new york", 1.0), ("New  York!", 3.0), ("3rd", 1.0)])
    assert [(h.words, h.boost) for h in hot] == [(("NEW", "YORK"), 3.0), (("THIRD",), 1.0)]


# ----------------------------------------------------------------------------- decoding


def log_probs(path: list[list[tuple[int, float]]], vocab: int) -> np.ndarray:
    """(T, vocab) log-probs: frame t gives each (id, logit) of `path[t]` its logit over a floor."""
    lp = torch.full((len(path), vocab), -8.0)
    for t, options in enumerate(path):
        for i, logit in options:
            lp[t, i] = logit
    return lp.log_softmax(-1).numpy()


def decode(decoder, lp: np.ndarray) -> str:
    utt = decoder.begin()
    utt.push(lp[:5], 0)  # in two pushes, as a stream's chunks come
    utt.push(lp[5:], 5)
    return " ".join(w.word for w in utt.end().words)


@pytest.fixture(scope="module")
def phone_decoder(tmp_path_factory):
    d = tmp_path_factory.mktemp("hot")
    lm = build_ngram_lm(SENTENCES, 2, d / "lm.arpa")
    (d / "phones.lex").write_text("".join(f"{w}\t{s}\n" for w, s in PHONE_LEXICON.items()))
    return BeamDecoder(PhoneTable(PHONES), "phones", 0.04, beam_size=8, beam_threshold=PRUNE, lm=lm,
                       lexicon=d / "phones.lex", lm_weight=1.0)


def phone_path(spoken: list[list[tuple[str, float]]]) -> np.ndarray:
    table = PhoneTable(PHONES)
    frames = []
    for options in spoken:
        frames += [[(table.encode(p)[0], logit) for p, logit in options], [(0, 0.0)]]
    return log_probs(frames, table.vocab_size)


def test_phone_decoder_writes_a_boosted_word_outside_its_lexicon_only_when_boosted(phone_decoder):
    """"A DAB": DAB (D AE B, CMUdict) is in no lexicon; the phones say it, but BAD is close."""
    lp = phone_path([[("AH", 0.0)], [("D", 0.0), ("B", -1.0)], [("AE", 0.0)], [("B", 0.0), ("D", -1.0)]])
    assert "DAB" not in decode(phone_decoder, lp)
    assert decode(phone_decoder, lp) == "A BAD"
    assert decode(BiasedBeamDecoder(phone_decoder, parse_hotwords([("dab", 3.0)])), lp) == "A DAB"
    # a hotword the audio does not hold is not written
    other = phone_path([[("AH", 0.0)], [("K", 0.0)], [("AE", 0.0)], [("T", 0.0)]])
    assert decode(BiasedBeamDecoder(phone_decoder, parse_hotwords([("dab", 3.0)])), other) == "A CAT"


def test_phone_decoder_prefers_a_boosted_lexicon_word_the_audio_makes_second(phone_decoder):
    lp = phone_path([[("S", 0.0), ("K", -0.5)], [("AE", 0.0)], [("T", 0.0)]])
    assert decode(phone_decoder, lp) == "SAT"
    assert decode(BiasedBeamDecoder(phone_decoder, parse_hotwords([("cat", 2.0)])), lp) == "CAT"
    # an unfinished phrase earns nothing: "CAT DUST" boosted, only CAT heard
    assert decode(BiasedBeamDecoder(phone_decoder, parse_hotwords([("cat dust", 0.3)])), lp) == "SAT"


def test_hotwords_the_phone_head_cannot_spell_are_refused(phone_decoder):
    with pytest.raises(ValueError, match="'ZOO'.*has no"):
        BiasedBeamDecoder(phone_decoder, parse_hotwords([("zoo", 1.0)]))


def test_piece_beam_without_lm_writes_a_boosted_phrase_only_when_boosted():
    """Lexicon-free: pieces "▁A ▁E H" with ▁G a close second to ▁E; "A GH" only when GH is boosted."""
    table = Pieces()
    decoder = BeamDecoder(table, "asr", 0.04, beam_size=8, beam_threshold=PRUNE)
    ids = {p: i for i, p in enumerate(PIECES)}
    frames = [[(ids["\u2581A"], 0.0)], [(0, 0.0)], [(ids["\u2581E"], 0.0), (ids["\u2581G"], -1.0)], [(0, 0.0)],
              [(ids["H"], 0.0)], [(0, 0.0)], [(0, 0.0)]]
    lp = log_probs(frames, len(PIECES))
    assert decode(decoder, lp) == "A EH"
    assert decode(BiasedBeamDecoder(decoder, parse_hotwords([("gh", 2.0)])), lp) == "A GH"
    assert decode(BiasedBeamDecoder(decoder, parse_hotwords([("j", 5.0)])), lp) == "A EH"


def test_streams_with_hotwords_through_the_recognizer():
    """`new_stream(hotwords=...)`: only beam decoders can be biased; streams sharing a list share
    its build; a stream with hotwords decodes to the end."""
    rec = tiny_recognizer()
    with pytest.raises(ValueError, match="need a beam decoder"):
        rec.new_stream(hotwords=[("GH", 2.0)])
    rec.decoders["beam"] = BeamDecoder(Pieces(), "asr", rec.frame_shift_s, beam_size=4, beam_threshold=PRUNE)
    a = rec.new_stream(decoder="beam", hotwords=[("GH", 2.0)])
    b = rec.new_stream(decoder="beam", hotwords=[("gh", 2.0)])
    assert isinstance(a.decoder, BiasedBeamDecoder) and a.decoder is b.decoder
    with pytest.raises(ValueError, match="empty"):
        rec.new_stream(decoder="beam", hotwords=[("", 2.0)])
    rec.accept(a, signal(1.0, seed=3))
    rec.finish(a)
    assert rec.events(a) is not None


def test_bias_cache_is_bounded():
    cache = BiasCache(size=2)
    decoder = BeamDecoder(Pieces(), "asr", 0.04, beam_size=4, beam_threshold=PRUNE)
    lists = [parse_hotwords([(w, 1.0)]) for w in ("A", "B", "GH")]
    first = cache.get(decoder, lists[0])
    assert cache.get(decoder, lists[0]) is first
    cache.get(decoder, lists[1])
    cache.get(decoder, lists[2])
    assert cache.get(decoder, lists[0]) is not first  # evicted, built again


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_negligible_boost_searches_exactly_as_the_unbiased_decoder(phone_decoder, seed):
    """The biased search re-implements the LM's part (KenLM x weight through a Python LM, the
    lexicon trie rebuilt): with a bonus too small to matter it must find the same words, on
    random posteriors where the LM decides a lot."""
    rng = np.random.default_rng(seed)
    lp = torch.from_numpy(rng.normal(0, 2.0, (40, len(PHONES) + 1)).astype(np.float32)).log_softmax(-1).numpy()
    pieces = Pieces()
    piece_decoder = BeamDecoder(pieces, "asr", 0.04, beam_size=8, beam_threshold=PRUNE)
    lp_pieces = torch.from_numpy(rng.normal(0, 2.0, (40, len(PIECES))).astype(np.float32)).log_softmax(-1).numpy()
    tiny = parse_hotwords([("bad", 1e-9), ("cat sat", 1e-9)])  # lexicon words: nothing added
    assert decode(BiasedBeamDecoder(phone_decoder, tiny), lp) == decode(phone_decoder, lp) != ""
    assert decode(BiasedBeamDecoder(piece_decoder, parse_hotwords([("gh", 1e-9)])), lp_pieces) == \
        decode(piece_decoder, lp_pieces) != ""


def test_a_list_with_too_many_words_outside_the_lexicon_is_refused(phone_decoder):
    """Each new word is spelled for the list (the G2P model: tens of ms a word), so a list may
    hold at most MAX_NEW_WORDS of them, counted before any is spelled; lexicon words do not count."""
    from mtspeech.streaming.hotwords import MAX_NEW_WORDS

    letters = "BCDFGHJKLMNPQRSTVWXZ"
    new = [f"Q{a}{b}" for a in letters for b in letters][: MAX_NEW_WORDS + 1]
    BiasedBeamDecoder(phone_decoder, parse_hotwords([(w, 1.0) for w in ("cat", "bad", "sat")] * 300))
    with pytest.raises(ValueError, match=f"{MAX_NEW_WORDS + 1} words outside the decoder's lexicon"):
        BiasedBeamDecoder(phone_decoder, parse_hotwords([(w, 1.0) for w in new]))


def test_biased_search_over_many_pieces_extends_the_likely_ones():
    """A 300-piece table (past BIASED_PIECES_PER_FRAME): on posteriors whose mass sits on a few
    pieces a frame, the biased search finds what the unbiased one finds, and the boosted word."""
    from mtspeech.streaming.biased_beam import BIASED_PIECES_PER_FRAME

    class Many:
        pieces = ["<blank>", "<unk>"] + [f"\u2581{a}{b}{c}" for a in "BCDFGHJKLM" for b in "AEIOU"
                                        for c in "NPRSTV"][:298]
        vocab_size = len(pieces)

        def id_to_piece(self, i):
            return self.pieces[i]

        def encode(self, text):
            return [self.pieces.index("\u2581" + w) for w in text.split()]

    table = Many()
    assert table.vocab_size > BIASED_PIECES_PER_FRAME
    decoder = BeamDecoder(table, "asr", 0.04, beam_size=8, beam_threshold=PRUNE)
    frames = [[(5, 0.0)], [(0, 0.0)], [(7, 0.0), (250, -1.0)], [(0, 0.0)], [(9, 0.0)], [(0, 0.0)]]
    lp = log_probs(frames, table.vocab_size)
    heard, second = " ".join(table.pieces[i][1:] for i in (5, 7, 9)), table.pieces[250][1:]
    assert decode(decoder, lp) == heard
    assert decode(BiasedBeamDecoder(decoder, parse_hotwords([(second, 1e-9)])), lp) == heard
    assert decode(BiasedBeamDecoder(decoder, parse_hotwords([(second, 3.0)])), lp).split()[1] == second


def test_partials_name_a_word_added_for_the_stream(phone_decoder):
    """Word ids past the lexicon's are the stream's own words: partials and finals name them."""
    lp = phone_path([[("AH", 0.0)], [("D", 0.0), ("B", -1.0)], [("AE", 0.0)], [("B", 0.0), ("D", -1.0)],
                     [("AH", 0.0)]])
    utt = BiasedBeamDecoder(phone_decoder, parse_hotwords([("dab", 3.0)])).begin()
    partials = []
    for t in range(0, len(lp), 2):
        utt.push(lp[t:t + 2], t)
        p = utt.partial()
        partials.append(p.words if p else ())
    assert any("DAB" in words for words in partials)
    words = utt.end().words
    assert [w.word for w in words] == ["A", "DAB", "A"] and words[1].start < words[1].end
