"""LibriSpeech-style text normalisation: `normalize_text("It's 3:30, Dr. Who!")`.

LibriSpeech transcripts are upper case words separated by single spaces, with apostrophes
kept inside words ("DON'T", "FATHERS'") and no other punctuation; numbers are spelled out.
This module maps free text onto that form so synthetic sentences, user text and language-
model text share one vocabulary. Number reading is deliberately small and explicit (no
dependency): cardinals, ordinals ("21st"), decimals, years 1100-1999 ("NINETEEN EIGHTY
FOUR"), "$" and "%".
"""

from __future__ import annotations

import re
import unicodedata

_ONES = ("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN "
         "FOURTEEN FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN").split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
_SCALES = ((10**12, "TRILLION"), (10**9, "BILLION"), (10**6, "MILLION"), (1000, "THOUSAND"))
_ORDINAL_IRREGULAR = {"ONE": "FIRST", "TWO": "SECOND", "THREE": "THIRD", "FIVE": "FIFTH",
                      "EIGHT": "EIGHTH", "NINE": "NINTH", "TWELVE": "TWELFTH"}


def _below_1000(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "HUNDRED"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
        if n:
            words.append(_ONES[n])
    elif n or not words:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> str:
    """Cardinal reading of a non-negative integer: 1234 -> "ONE THOUSAND TWO HUNDRED THIRTY FOUR"."""
    if n < 0:
        return "MINUS " + number_to_words(-n)
    if n >= 10**15:  # read very long digit strings digit by digit, as people do
        return " ".join(_ONES[int(d)] for d in str(n))
    words: list[str] = []
    for value, name in _SCALES:
        if n >= value:
            words += _below_1000(n // value) + [name]
            n %= value
    if n or not words:
        words += _below_1000(n)
    return " ".join(words)


def ordinal_to_words(n: int) -> str:
    """21 -> "TWENTY FIRST", 12 -> "TWELFTH", 40 -> "FORTIETH"."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("Y"):
        last = last[:-1] + "IETH"
    else:
        last += "TH"
    return " ".join(words[:-1] + [last])


def year_to_words(n: int) -> str:
    """1984 -> "NINETEEN EIGHTY FOUR", 1900 -> "NINETEEN HUNDRED", 1905 -> "NINETEEN O FIVE"."""
    hi, lo = divmod(n, 100)
    if lo == 0:
        return f"{number_to_words(hi)} HUNDRED"
    if lo < 10:
        return f"{number_to_words(hi)} O {number_to_words(lo)}"
    return f"{number_to_words(hi)} {number_to_words(lo)}"


def _number_token(m: re.Match) -> str:
    cur, digits, frac, suffix, pct = m.group("cur", "int", "frac", "ord", "pct")
    grouped = "," in digits  # "1,984" is a count, not a year
    digits = digits.replace(",", "")
    n = int(digits)
    if suffix:
        words = ordinal_to_words(n)
    elif not (grouped or frac or cur or pct) and len(digits) == 4 and 1100 <= n <= 1999:
        words = year_to_words(n)
    else:
        words = number_to_words(n)
        if frac is not None:
            words += " POINT " + " ".join(_ONES[int(d)] for d in frac)
    if pct:
        words += " PERCENT"
    if cur:
        words += " DOLLAR" if n == 1 and frac is None else " DOLLARS"
    return f" {words} "


_NUMBER = re.compile(
    r"(?P<cur>\$)?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?"
    r"(?P<ord>st|nd|rd|th)?(?P<pct>%)?(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u02bc": "'"})


def normalize_text(s: str) -> str:
    """LibriSpeech-style normalisation: upper case, apostrophes kept inside words,
    numbers spelled out, other punctuation removed, whitespace collapsed.

    >>> normalize_text("Don't pay $5 for the 2nd   copy -- it's 50% off!")
    "DON'T PAY FIVE DOLLARS FOR THE SECOND COPY IT'S FIFTY PERCENT OFF"
    """
    # Strip accents (café -> cafe) but keep the letters; LibriSpeech is plain ASCII.
    s = unicodedata.normalize("NFKD", s.translate(_APOSTROPHES))
    s = "".join(c for c in s if not unicodedata.combining(c))
    s = s.replace("&", " and ")
    s = _NUMBER.sub(_number_token, s)
    s = s.upper()
    # Anything that is not a letter or an apostrophe separates words (hyphens included,
    # as in LibriSpeech: "LONG FORGOTTEN").
    s = re.sub(r"[^A-Z']+", " ", s)
    words = []
    for w in s.split():
        # Keep word-internal apostrophes ("DON'T") and the plural possessive ("FATHERS'");
        # drop quote marks around words ("'HELLO'").
        w = re.sub(r"'{2,}", "'", w).lstrip("'")
        if w.endswith("'") and not w[:-1].endswith("S"):
            w = w.rstrip("'")
        if w.strip("'"):
            words.append(w)
    return " ".join(words)
