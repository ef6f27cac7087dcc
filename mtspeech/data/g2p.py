"""Pronunciations of words the decoders have never seen: CMUdict, else a G2P model (gruut).

Open vocabulary (hotwords, `--lexicon-extra` words) needs a phone spelling for any word a user
types, so the phone-lexicon decoder can output it. `pronounce(word)` returns CMUdict's first
pronunciation (stress removed, as the phone labels are made: `mtspeech/data/lexicon.py`) and,
for a word CMUdict lacks, the one of gruut's en-us grapheme-to-phoneme model (`gruut` +
`gruut-lang-en`: a lexicon plus a CRF model, offline). gruut answers in IPA;
`IPA_TO_ARPABET` maps its en-us inventory onto the model's phone set (`PHONES`, CMUdict's 39
ARPAbet phones):

- stress (ˈ ˌ) and length (ː) marks are dropped, as CMUdict's stress digits are;
- schwa ə is AH and the r-coloured ɚ / ɝ are ER, as CMUdict writes them (AH0, ER0);
- syllabic consonants (l̩ m̩ n̩) are AH + the consonant ("BOTTLE" = B AA T AH L);
- the flap ɾ and the glottal stop ʔ are T, the phoneme they realise in American English;
- a symbol outside the table is retried without its diacritics, then refused (`G2PError`):
  a spelling with a phone silently dropped would be a wrong word in the lexicon.

Training labels keep the espeak-ng fallback of `Lexicon(oov="g2p")`: the decoder lexicon spells
a training word as its labels spelled it, and only words without labels come through here.
"""

from __future__ import annotations

import functools
import logging
import unicodedata

from mtspeech.data.lexicon import PHONES, cmu_dictionary

log = logging.getLogger(__name__)

IPA_TO_ARPABET: dict[str, tuple[str, ...]] = {
    # vowels and diphthongs (gruut-ipa's en-us inventory, with the variants it lists)
    "ɑ": ("AA",), "a": ("AA",), "ɒ": ("AA",), "æ": ("AE",), "ʌ": ("AH",), "ə": ("AH",),
    "ɔ": ("AO",), "aʊ": ("AW",), "aɪ": ("AY",), "ɛ": ("EH",), "ɜ": ("ER",), "ɚ": ("ER",),
    "ɝ": ("ER",), "eɪ": ("EY",), "e": ("EY",), "ɪ": ("IH",), "ɨ": ("IH",), "i": ("IY",),
    "oʊ": ("OW",), "o": ("OW",), "ɔɪ": ("OY",), "ʊ": ("UH",), "u": ("UW",),
    # consonants
    "b": ("B",), "t͡ʃ": ("CH",), "tʃ": ("CH",), "d": ("D",), "ð": ("DH",), "f": ("F",),
    "ɡ": ("G",), "g": ("G",), "h": ("HH",), "d͡ʒ": ("JH",), "dʒ": ("JH",), "k": ("K",),
    "x": ("K",), "l": ("L",), "ɫ": ("L",), "ʟ": ("L",), "m": ("M",), "n": ("N",), "ŋ": ("NG",), "p": ("P",),
    "ɹ": ("R",), "r": ("R",), "s": ("S",), "ʃ": ("SH",), "t": ("T",), "ɾ": ("T",), "ʔ": ("T",),
    "θ": ("TH",), "v": ("V",), "w": ("W",), "ʍ": ("W",), "j": ("Y",), "z": ("Z",), "ʒ": ("ZH",),
    # syllabic consonants
    "l̩": ("AH", "L"), "ʟ̩": ("AH", "L"), "m̩": ("AH", "M"), "n̩": ("AH", "N"),
}
_DROPPED = "ˈˌːˑ\u032f"  # stress, length, non-syllabic mark: CMUdict spells none of them
assert all(p in PHONES for spelling in IPA_TO_ARPABET.values() for p in spelling)


class G2PError(ValueError):
    """A word the G2P model cannot spell in the model's phones; the message names word and symbol."""


def ipa_to_arpabet(phonemes: list[str], word: str = "?") -> tuple[str, ...]:
    """gruut's IPA phonemes of one word → ARPAbet phones (see the module docstring)."""
    out: list[str] = []
    for ipa in phonemes:
        symbol = "".join(c for c in ipa if c not in _DROPPED)
        if not symbol:
            continue
        mapped = IPA_TO_ARPABET.get(symbol)
        if mapped is None:  # e.g. a nasalised vowel: its base letter is the phone
            mapped = IPA_TO_ARPABET.get("".join(c for c in unicodedata.normalize("NFD", symbol)
                                                if not unicodedata.combining(c)))
        if mapped is None:
            raise G2PError(f"the G2P model spells {word!r} with {ipa!r}, which has no ARPAbet phone "
                           "(add the word with its phones to a --lexicon-extra file)")
        out.extend(mapped)
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _gruut_sentences():
    try:
        from gruut import sentences
    except ImportError as e:  # a declared dependency: a broken install, say how to mend it
        raise G2PError(f"words outside CMUdict need gruut and gruut-lang-en (pip install gruut gruut-lang-en): {e}")
    return sentences


@functools.lru_cache(maxsize=65536)
def g2p_phones(word: str) -> tuple[str, ...]:
    """ARPAbet phones of one word from gruut's en-us G2P (its lexicon, else its CRF model).

    Raises G2PError when gruut gives no phones or a symbol without an ARPAbet phone.
    """
    phones: list[str] = []
    # gruut reads text: a word such as "R2D2" becomes several spoken words, spelled in turn
    for sentence in _gruut_sentences()(word.lower(), lang="en-us"):
        for w in sentence:
            if w.is_spoken and w.phonemes:
                phones.extend(ipa_to_arpabet(w.phonemes, word))
    if not phones:
        raise G2PError(f"the G2P model gives no pronunciation for {word!r}")
    return tuple(phones)


def pronounce(word: str) -> tuple[str, ...]:
    """Phones of a (normalised, upper-case) word: CMUdict's first pronunciation, else gruut's."""
    known = cmu_dictionary().get(word.upper())
    return known if known is not None else g2p_phones(word.upper())
