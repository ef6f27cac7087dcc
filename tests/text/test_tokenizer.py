"""Sentencepiece tokenizer: blank at id 0, small vocabularies, exact round trip."""

from __future__ import annotations

import pickle
import random

import pytest

from mtspeech.text.tokenizer import Tokenizer, train_tokenizer

WORDS = ("THE OF AND TO A IN HE THAT WAS IT HIS HAD WITH AS FOR YOU BUT SHE ON HER NOT BE AT "
         "BY WHICH HAVE ALL FROM THEY THIS WERE SO ONE SAID NO WOULD WHAT MY MAN THERE LITTLE "
         "DON'T FATHER'S CHAPTER QUIXOTE SQUIRE JOURNEY EVENING").split()


def sentences(n: int = 50, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = train_tokenizer(sentences(), tmp_path_factory.mktemp("spm") / "asr_spm", vocab_size=48)
    assert path.name == "asr_spm.model" and path.exists()
    return Tokenizer(path)


def test_blank_is_id_zero_and_never_encoded(tokenizer):
    assert tokenizer.blank_id == 0 and tokenizer.id_to_piece(0) == "<blank>"
    assert tokenizer.id_to_piece(1) == "<unk>"
    assert 30 <= tokenizer.vocab_size <= 48
    for s in sentences(20, seed=1):
        assert 0 not in tokenizer.encode(s)


def test_round_trip_librispeech_text(tokenizer):
    for s in sentences(20, seed=2) + ["DON'T SAY THE FATHER'S NAME", "A"]:
        ids = tokenizer.encode(s)
        assert all(isinstance(i, int) for i in ids)
        assert tokenizer.decode(ids) == s
        assert tokenizer.decode([0] + ids + [0, 0]) == s  # CTC blanks are dropped


def test_pickles_without_the_file(tokenizer, tmp_path):
    clone = pickle.loads(pickle.dumps(tokenizer))
    s = "THE LITTLE SQUIRE"
    assert clone.encode(s) == tokenizer.encode(s) and clone.vocab_size == tokenizer.vocab_size


def test_bpe_and_too_small_vocab(tmp_path):
    bpe = Tokenizer(train_tokenizer(sentences(), tmp_path / "bpe", vocab_size=40, model_type="bpe"))
    assert bpe.decode(bpe.encode("HIS FATHER'S EVENING")) == "HIS FATHER'S EVENING"
    with pytest.raises(ValueError, match="distinct characters"):
        train_tokenizer(sentences(), tmp_path / "tiny", vocab_size=8)
    with pytest.raises(FileNotFoundError):
        Tokenizer(tmp_path / "nope.model")
