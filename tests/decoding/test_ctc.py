"""Decoding (greedy, beam, word times) and n-gram LM building on hand-built cases."""

import math

import pytest
import torch

from mtspeech.alignment import word_alignments
from mtspeech.decoding.ctc import BeamSearchDecoder, GreedyDecoder, PhoneTable, add_word_times, build_decoder
from mtspeech.decoding.lm import ArpaLM, build_lexicon, build_ngram_lm, build_phone_lexicon
from tiny_asr import longest_match_ids

PIECES = ["<blank>", "<unk>", "▁THE", "▁CAT", "▁C", "AT", "S", "▁SAT", "▁MAT", "▁ON", "▁HAT"]


class PieceTokenizer:
    """A hand-built sentencepiece look-alike: greedy longest-match encoding."""

    vocab_size = len(PIECES)

    def id_to_piece(self, i):
        return PIECES[i]

    def decode(self, ids):
        return "".join(PIECES[i] for i in ids).replace("▁", " ").strip()

    def encode(self, text):
        return longest_match_ids(text, PIECES)


TOK = PieceTokenizer()
V = len(PIECES)


def peaked(path, floor=-8.0):
    """(T, V) log-probs whose argmax follows `path` (one token id per frame)."""
    lp = torch.full((len(path), V), floor)
    for t, tok in enumerate(path):
        lp[t, tok] = 0.0
    return lp.log_softmax(-1)


def test_greedy_collapses_repeats_and_blanks_and_respects_lens():
    path = [2, 2, 0, 3, 3, 0, 3, 6, 0, 7]
    lp = torch.stack([peaked(path), peaked(path)])
    hyps = GreedyDecoder(TOK).decode(lp, torch.tensor([10, 4]))
    assert hyps[0].tokens == [2, 3, 3, 6, 7]
    assert hyps[0].token_frames == [0, 3, 6, 7, 9]
    assert hyps[0].text == "THE CAT CATS SAT"
    assert hyps[1].tokens == [2, 3] and hyps[1].token_frames == [0, 3]
    assert hyps[0].score == pytest.approx(float(lp[0].max(-1).values.sum()))


def test_one_best_path_collapse_for_offline_task_and_streaming_greedy():
    """`ctc_runs` is the only collapse: the offline decoder, the CTC task's metrics and the
    streaming decoder fed in pieces (a run split across pieces stays one token) agree."""
    from mtspeech.alignment import ctc_runs, greedy_tokens
    from mtspeech.streaming.decoders import GreedyDecoder as StreamingGreedy
    from mtspeech.tasks.ctc import CTCTask

    path = [2, 2, 0, 3, 3, 0, 3, 6, 6, 6, 0, 7]
    assert ctc_runs(torch.tensor(path)) == [(2, 0, 1), (0, 2, 2), (3, 3, 4), (0, 5, 5), (3, 6, 6),
                                            (6, 7, 9), (0, 10, 10), (7, 11, 11)]
    assert ctc_runs(torch.tensor([], dtype=torch.long)) == []
    assert greedy_tokens(torch.tensor(path)) == [2, 3, 3, 6, 7]
    lp = peaked(path)[None]
    offline = GreedyDecoder(TOK).decode(lp, torch.tensor([len(path)]))[0]
    assert CTCTask.greedy_decode(lp, torch.tensor([len(path)]))[0] == offline.tokens
    utt = StreamingGreedy(TOK, 0, 0.04).begin()
    for a, b in ((0, 1), (1, 4), (4, 8), (8, 12)):  # cuts inside the runs of 2, 3 and 6
        utt.push(lp[0, a:b], a)
    assert [t.id for t in utt.tokens] == offline.tokens
    assert [t.first_frame for t in utt.tokens] == offline.token_frames
    assert [(t.first_frame, t.last_frame) for t in utt.tokens] == [(0, 1), (3, 4), (6, 6), (7, 9), (11, 11)]


def test_beam_never_worse_than_greedy_on_random_peaked_log_probs():
    gen = torch.Generator().manual_seed(0)
    greedy = GreedyDecoder(TOK)
    beam = BeamSearchDecoder(TOK, beam_size=8)
    logits = torch.randn(6, 40, V, generator=gen) * 3
    logits[..., 0] += 2  # blank-heavy, like a trained CTC model
    lp = logits.log_softmax(-1)
    lens = torch.tensor([40, 40, 33, 25, 12, 1])
    for g, b in zip(greedy.decode(lp, lens), beam.decode(lp, lens)):
        assert b.score >= g.score - 1e-4
    # strongly peaked: beam and greedy agree on text and timing
    sharp = (logits * 10).log_softmax(-1)
    for g, b in zip(greedy.decode(sharp, lens), beam.decode(sharp, lens)):
        assert b.text == g.text and b.tokens == g.tokens
        assert b.token_frames == g.token_frames
        assert b.score == pytest.approx(g.score, abs=1e-3)


def test_beam_prefix_sum_beats_best_path_where_greedy_misses():
    # Two frames; per frame "▁CAT" 0.4, blank 0.35, "▁MAT" 0.25 (rest tiny).
    # Greedy: "CAT CAT"? no: argmax path CAT,CAT -> "CAT" with p .16.  Prefix "CAT" also
    # gets CAT-blank and blank-CAT: .16 + .14 + .14 = .44. Sum scoring keeps that mass.
    p = torch.full((2, V), 1e-6)
    p[:, 3], p[:, 0], p[:, 8] = 0.4, 0.35, 0.25
    lp = (p / p.sum(-1, keepdim=True)).log()[None]
    hyp = BeamSearchDecoder(TOK, beam_size=5, log_add=True).decode(lp, torch.tensor([2]))[0]
    assert hyp.text == "CAT"
    assert math.exp(hyp.score) == pytest.approx(0.16 + 0.14 + 0.14, rel=1e-3)


def test_build_decoder_registry():
    assert isinstance(build_decoder("greedy", TOK), GreedyDecoder)
    assert isinstance(build_decoder("beam", TOK, beam_size=4), BeamSearchDecoder)
    with pytest.raises(ValueError, match="unknown decoder kind"):
        build_decoder("viterbi", TOK)


def test_word_alignments_times_and_confidence():
    path = [0, 2, 2, 0, 0, 3, 6, 0, 7, 7, 7, 0]
    lp = peaked(path)
    words = word_alignments(lp, [2, 3, 6, 7], TOK, frame_shift_s=0.04)
    assert [w.word for w in words] == ["THE", "CATS", "SAT"]
    assert [round(w.start, 2) for w in words] == [0.04, 0.20, 0.32]
    assert [round(w.end, 2) for w in words] == [0.12, 0.28, 0.44]
    assert all(0.99 < w.confidence <= 1.0 for w in words)
    # a flat frame lowers that word's confidence only
    lp[9] = torch.full((V,), -math.log(V))
    words2 = word_alignments(lp, [2, 3, 6, 7], TOK, 0.04)
    assert words2[2].confidence < 0.8 and words2[0].confidence > 0.99
    assert word_alignments(lp, [], TOK, 0.04) == []
    # batch helper: padded frames beyond lens are ignored
    batch = torch.stack([peaked(path), torch.cat([peaked(path[:6]), peaked([2] * 6)])])
    lens = torch.tensor([12, 6])
    hyps = add_word_times(GreedyDecoder(TOK).decode(batch, lens), batch, lens, TOK, 0.04)
    assert [w.word for w in hyps[0].words] == ["THE", "CATS", "SAT"]
    assert [w.word for w in hyps[1].words] == ["THE", "CAT"] and hyps[1].words[-1].end <= 6 * 0.04


TEXTS = ["THE CAT SAT ON THE MAT", "THE CATS SAT", "THE CAT SAT", "THE HAT SAT ON THE CAT"]


def test_arpa_parses_back_and_every_context_sums_to_one(tmp_path):
    path = build_ngram_lm(TEXTS, order=3, out_path=tmp_path / "lm.arpa")
    lm = ArpaLM.load(path)
    assert lm.order == 3 and {"THE", "</s>", "<unk>", "<s>"} <= set(lm.vocab)
    predicted = [w for w in lm.vocab if w != "<s>"]
    contexts = [(), ("THE",), ("<s>",), ("SAT",), ("MAT",), ("THE", "CAT"), ("<s>", "THE"), ("ON", "HAT")]
    for h in contexts:
        total = sum(10 ** lm.log10_prob(w, h) for w in predicted)
        assert total == pytest.approx(1.0, abs=1e-4), h
    # seen continuations beat unseen ones
    assert lm.log10_prob("CAT", ["THE"]) > lm.log10_prob("SAT", ["THE"])
    assert lm.log10_prob("ZEBRA") == lm.log10_prob("<unk>")


# A hand-written trigram ARPA file: every score below is worked out by hand with the ARPA backoff
# rule (the one kenlm and SRILM apply): p(w | h) = p(h w) if listed, else bow(h) + p(w | h minus its
# first word), where an unlisted backoff weight is log10 1 = 0.
HAND_ARPA = """\\data\\
ngram 1=5
ngram 2=3
ngram 3=1

\\1-grams:
-1.0 <unk> 0
-99 <s> -0.5
-0.7 THE -0.3
-0.9 CAT -0.2
-0.6 </s>

\\2-grams:
-0.2 <s> THE -0.1
-0.4 THE CAT -0.25
-0.3 CAT </s>

\\3-grams:
-0.05 <s> THE CAT

\\end\\
"""


def test_arpa_scores_match_the_backoff_rule_by_hand(tmp_path):
    path = tmp_path / "hand.arpa"
    path.write_text(HAND_ARPA)
    lm = ArpaLM.load(path)
    assert lm.log10_prob("CAT", ["<s>", "THE"]) == pytest.approx(-0.05)  # the trigram itself
    assert lm.log10_prob("THE", ["THE", "CAT"]) == pytest.approx(-0.25 - 0.2 - 0.7)  # two backoffs to the unigram
    assert lm.log10_prob("</s>", ["THE", "CAT"]) == pytest.approx(-0.25 - 0.3)  # one backoff to the bigram
    assert lm.log10_prob("CAT", ["CAT", "THE"]) == pytest.approx(-0.4)  # (CAT, THE) has no backoff: 0
    assert lm.log10_prob("DOG", ["<s>"]) == pytest.approx(-0.5 - 1.0)  # unknown scores as <unk>
    assert lm.log10_prob("CAT", ["<s>", "<s>", "THE"]) == pytest.approx(-0.05)  # only the last order-1 words count
    # a sentence is scored from <s> and ends with </s>: -0.2 + -0.05 + (-0.25 - 0.3)
    assert lm.sentence_log10_prob(["THE", "CAT"]) == pytest.approx(-0.8)
    path.write_text(HAND_ARPA.replace("ngram 2=3", "ngram 2=4"))
    with pytest.raises(ValueError, match="header says 4 2-grams"):
        ArpaLM.load(path)


def test_lm_beam_picks_the_word_the_lm_prefers(tmp_path):
    # Acoustics say "THE ?AT SAT" with "▁CAT" and "▁HAT" almost tied (HAT a bit ahead);
    # the LM saw "THE CAT SAT" many times, never "THE HAT SAT".
    lm = build_ngram_lm(["THE CAT SAT"] * 5 + ["THE HAT"], order=2, out_path=tmp_path / "lm.arpa")
    lex = build_lexicon(["THE", "CAT", "HAT", "SAT"], TOK, tmp_path / "lex.txt")
    assert "CAT\t▁CAT" in lex.read_text()
    lp = peaked([2, 0, 10, 0, 7])
    lp[2, 3] = lp[2, 10] - 0.2
    lp = lp.log_softmax(-1)[None]
    lens = torch.tensor([5])
    assert GreedyDecoder(TOK).decode(lp, lens)[0].text == "THE HAT SAT"
    with_lm = BeamSearchDecoder(TOK, beam_size=8, lm=lm, lexicon=lex, lm_weight=1.0)
    assert with_lm.decode(lp, lens)[0].text == "THE CAT SAT"
    # the lexicon is derived from the LM when not given
    auto = BeamSearchDecoder(TOK, beam_size=8, lm=lm, lm_weight=1.0)
    assert auto.decode(lp, lens)[0].text == "THE CAT SAT"
    assert (tmp_path / "lm.lexicon.txt").exists()


def test_words_from_phone_posteriors_through_a_phone_lexicon(tmp_path, caplog):
    # CMUdict: CAT = K AE T, HAT = HH AE T, THE = DH AH, SAT = S AE T. The phone head hears
    # "DH AH ?AE T S AE T" with K and HH nearly tied (HH a bit ahead); the LM knows "THE CAT SAT".
    phones = ["AE", "AH", "DH", "HH", "K", "S", "T"]  # no "N": a word needing it is left out
    table = PhoneTable(phones)
    assert table.decode(table.encode("DH AH K")) == "DH AH K" and table.id_to_piece(0) == "<blank>"
    lm = build_ngram_lm(["THE CAT SAT"] * 5 + ["THE HAT"] + ["THE MAN"], order=2, out_path=tmp_path / "lm.arpa")
    lex = build_phone_lexicon(ArpaLM.load(lm).vocab, phones, tmp_path / "phones.lex")
    assert lex.read_text().splitlines() == ["CAT\tK AE T", "HAT\tHH AE T", "SAT\tS AE T", "THE\tDH AH"]
    assert "MAN" in caplog.text  # M and N are not in the phone set
    ids = [table.encode(p)[0] for p in "DH AH HH AE T S AE T".split()]
    lp = peaked([ids[0], 0, ids[1], 0, ids[2], ids[3], ids[4], 0, ids[5], ids[6], ids[7]])
    lp[4, table.encode("K")[0]] = lp[4, ids[2]] - 0.2
    lp = lp[:, : table.vocab_size].log_softmax(-1)[None]  # one column per phone-table id
    lens = torch.tensor([lp.shape[1]])
    no_lm = BeamSearchDecoder(table, beam_size=8, lm=lm, lexicon=lex, lm_weight=0.0)
    assert no_lm.decode(lp, lens)[0].text == "THE HAT SAT"
    with_lm = BeamSearchDecoder(table, beam_size=8, lm=lm, lexicon=lex, lm_weight=1.0)
    assert with_lm.decode(lp, lens)[0].text == "THE CAT SAT"
