"""Pronunciations of words outside CMUdict (mtspeech/data/g2p.py): gruut's IPA onto ARPAbet."""

from pathlib import Path

import pytest

from mtspeech.data.g2p import IPA_TO_ARPABET, G2PError, g2p_phones, ipa_to_arpabet, pronounce
from mtspeech.data.lexicon import PHONES, cmu_dictionary


def test_cmudict_words_keep_cmudict_phones():
    assert pronounce("cat") == cmu_dictionary()["CAT"] == ("K", "AE", "T")


@pytest.mark.parametrize("word", ["ZYXELBORG", "QUOKKA", "XOCHITL", "BLORPTON", "SAOIRSE"])
def test_words_cmudict_lacks_are_spelled_in_the_model_phones(word):
    assert word not in cmu_dictionary()
    phones = pronounce(word)
    assert phones and set(phones) <= set(PHONES)


def test_g2p_spells_a_known_word_as_cmudict_does():
    """gruut's own lexicon and the IPA map agree with CMUdict on plain words (stress aside)."""
    for word in ("CAT", "MEASURE", "CHURCH", "JUDGE", "THIN", "SING", "YES", "BOTTLE"):
        assert g2p_phones(word) == cmu_dictionary()[word], word


def test_ipa_map_drops_stress_and_splits_syllabic_consonants():
    assert ipa_to_arpabet(["b", "ˈɑ", "t", "l̩"]) == ("B", "AA", "T", "AH", "L")
    assert ipa_to_arpabet(["ˈaɪː", "ɾ", "ɚ"]) == ("AY", "T", "ER")
    assert ipa_to_arpabet(["ɑ̃"]) == ("AA",)  # a nasal vowel: its base letter


def test_a_symbol_without_a_phone_is_refused_naming_it():
    with pytest.raises(G2PError, match="'CLICK' with 'ʘ'"):
        ipa_to_arpabet(["k", "ʘ"], "CLICK")


def test_the_map_covers_gruuts_en_us_inventory():
    """Every phoneme (and listed variant) of gruut-ipa's en-us inventory has an ARPAbet spelling."""
    import gruut_ipa

    listing = Path(gruut_ipa.__file__).parent / "data" / "en-us" / "phonemes.txt"
    symbols = set()
    for line in listing.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields and not line.startswith("#"):
            symbols.update(f for f in fields if not any(c in f for c in "[]"))
    assert symbols
    for symbol in symbols:
        assert ipa_to_arpabet([symbol]), symbol
    assert all(set(v) <= set(PHONES) for v in IPA_TO_ARPABET.values())
