import pytest

from mtspeech.text.normalize import normalize_text, number_to_words, ordinal_to_words


@pytest.mark.parametrize("raw, expected", [
    ("Hello,   world!", "HELLO WORLD"),
    ("Don't stop -- it's the fathers' house.", "DON'T STOP IT'S THE FATHERS' HOUSE"),
    ("'Quoted,' she said.", "QUOTED SHE SAID"),
    ("A long-forgotten loved one", "A LONG FORGOTTEN LOVED ONE"),
    ("In 1984 there were 1,234 cats", "IN NINETEEN EIGHTY FOUR THERE WERE ONE THOUSAND TWO HUNDRED THIRTY FOUR CATS"),
    ("the 21st of 12 months", "THE TWENTY FIRST OF TWELVE MONTHS"),
    ("$5 or 50% or 3.14", "FIVE DOLLARS OR FIFTY PERCENT OR THREE POINT ONE FOUR"),
    ("Caf\u00e9 & bar\u2019s", "CAFE AND BAR'S"),
    ("  \t\n ", ""),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_idempotent_on_librispeech_style_text():
    s = "HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS AND BRUISED POTATOES AND FAT MUTTON'S PIECES"
    assert normalize_text(s) == s
    assert normalize_text(normalize_text("It's 2 o'clock, Mr. Smith.")) == normalize_text("It's 2 o'clock, Mr. Smith.")


def test_numbers():
    assert number_to_words(0) == "ZERO"
    assert number_to_words(115) == "ONE HUNDRED FIFTEEN"
    assert number_to_words(2_000_019) == "TWO MILLION NINETEEN"
    assert ordinal_to_words(40) == "FORTIETH" and ordinal_to_words(3) == "THIRD"
