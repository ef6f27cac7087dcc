"""Open vocabulary (mtspeech/decoding/vocabulary.py): `--lexicon-extra` words, their LM back-off,
and the phone decoder outputting a word CMUdict lacks once it is added."""

import pytest
import torch

from mtspeech.data.g2p import pronounce
from mtspeech.data.lexicon import PHONES
from mtspeech.decoding.ctc import BeamSearchDecoder, PhoneTable
from mtspeech.decoding.lm import ArpaLM, build_ngram_lm, build_phone_lexicon
from mtspeech.decoding.vocabulary import extend_arpa, floor_log10_prob, read_lexicon_extra


def test_read_lexicon_extra_words_phones_and_comments(tmp_path):
    f = tmp_path / "extra.txt"
    f.write_text("# names\nquokka\n\nNguyen  w ih1 n   # as its owner says it\n", encoding="utf-8")
    assert read_lexicon_extra(f) == {"QUOKKA": None, "NGUYEN": ("W", "IH", "N")}


@pytest.mark.parametrize("text, error", [
    ("NEW-YORK\n", "normalises to 2 words"),
    ("QUOKKA K W OH\n", r"phones \['OH'\] are not ARPAbet"),
    ("# only a comment\n", "no word in it"),
    ("!!!\n", "normalises to 0 words"),
])
def test_read_lexicon_extra_refuses_bad_lines_naming_them(tmp_path, text, error):
    f = tmp_path / "extra.txt"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=error):
        read_lexicon_extra(f)


def test_read_lexicon_extra_refuses_missing_and_binary_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_lexicon_extra(tmp_path / "nope.txt")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00word")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_lexicon_extra(tmp_path / "bin")


def test_added_words_back_off_to_the_rarest_words_unigram(tmp_path):
    lm = build_ngram_lm(["THE CAT SAT"] * 3 + ["THE HAT"], order=3, out_path=tmp_path / "lm.arpa")
    base = ArpaLM.load(lm)
    extended = ArpaLM.load(extend_arpa(lm, ["QUOKKA", "CAT"], tmp_path / "lm.extra.arpa"))
    floor = floor_log10_prob(base)
    assert extended.log_probs[0][("QUOKKA",)] == pytest.approx(floor, abs=1e-6)
    assert set(extended.vocab) == set(base.vocab) | {"QUOKKA"}  # CAT was there already
    # in a context: the context's back-off weights times the floor unigram, not <unk>'s score
    ctx = ["<s>", "THE"]
    backoff = base.log10_prob("QUOKKA", ctx) - base.log10_prob("<unk>", [])
    assert extended.log10_prob("QUOKKA", ctx) == pytest.approx(backoff + floor, abs=1e-5)
    assert extended.log10_prob("QUOKKA", ctx) > base.log10_prob("QUOKKA", ctx)
    for w in ("THE", "CAT", "SAT", "</s>"):  # the LM's own words keep their scores
        assert extended.log10_prob(w, ctx) == pytest.approx(base.log10_prob(w, ctx), abs=1e-6)


def peaked(ids: list[int], vocab: int, floor: float = -8.0) -> torch.Tensor:
    lp = torch.full((len(ids), vocab), floor)
    lp[torch.arange(len(ids)), torch.tensor(ids)] = 0.0
    return lp.log_softmax(-1)


def test_phone_decoder_outputs_a_word_outside_cmudict_once_added(tmp_path):
    """The phone head hears "THE" then QUOKKA's G2P spelling: with QUOKKA added (LM back-off +
    lexicon) the decoder writes it; without, it cannot."""
    table = PhoneTable(list(PHONES))
    lm = build_ngram_lm(["THE CAT SAT", "THE HAT", "A CAT"], order=2, out_path=tmp_path / "lm.arpa")
    spelling = pronounce("QUOKKA")
    path = []
    for p in ["DH", "AH", *spelling]:
        path += [table.encode(p)[0], 0]  # a blank after each phone: repeats stay apart
    lp = peaked(path, table.vocab_size)[None]
    lens = torch.tensor([lp.shape[1]])

    base_lex = build_phone_lexicon(ArpaLM.load(lm).vocab, PHONES, tmp_path / "base.lex")
    base = BeamSearchDecoder(table, beam_size=8, lm=lm, lexicon=base_lex, lm_weight=1.0)
    assert "QUOKKA" not in base.decode(lp, lens)[0].text

    extended = extend_arpa(lm, ["QUOKKA"], tmp_path / "lm.extra.arpa")
    lex = build_phone_lexicon(ArpaLM.load(extended).vocab, PHONES, tmp_path / "extra.lex",
                              spellings={"QUOKKA": spelling})
    assert f"QUOKKA\t{' '.join(spelling)}" in lex.read_text()
    added = BeamSearchDecoder(table, beam_size=8, lm=extended, lexicon=lex, lm_weight=1.0)
    assert added.decode(lp, lens)[0].text == "THE QUOKKA"
