"""Sentencepiece subword units for CTC: id 0 is the blank.

Trained with `pad_id=0, pad_piece="<blank>", unk_id=1` and no BOS/EOS, so the pad piece —
which never occurs in encoded text — doubles as the CTC blank and every other id is a real
unit. The normalisation rule is `identity`: transcripts are already LibriSpeech-normalised
(`mtspeech.text.normalize.normalize_text`), and `decode(encode(s)) == s` must hold.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

log = logging.getLogger(__name__)

BLANK_ID = 0
UNK_ID = 1


def train_tokenizer(texts: Iterable[str], model_prefix: str | os.PathLike, vocab_size: int,
                    model_type: str = "unigram") -> Path:
    """Train sentencepiece on `texts`; writes `model_prefix.model` (+ `.vocab`) and returns its path.

    `vocab_size` includes `<blank>` and `<unk>`. It is a soft limit (`hard_vocab_limit=False`),
    so a small corpus yields a smaller vocabulary instead of an error; it must still exceed
    the number of distinct characters + 2 (every character is a piece).
    """
    if model_type not in ("unigram", "bpe", "char", "word"):
        raise ValueError(f"model_type must be unigram, bpe, char or word, got {model_type!r}")
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("train_tokenizer: no non-empty text to train on")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    chars = {c for t in texts for c in t if not c.isspace()}
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=str(prefix),
            vocab_size=int(vocab_size),
            model_type=model_type,
            pad_id=BLANK_ID, pad_piece="<blank>", unk_id=UNK_ID, bos_id=-1, eos_id=-1,
            hard_vocab_limit=False,
            character_coverage=1.0,
            normalization_rule_name="identity",
            input_sentence_size=2_000_000, shuffle_input_sentence=True,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(
            f"sentencepiece training for {prefix}.model failed ({e}). The {len(texts)} sentences hold "
            f"{len(chars)} distinct characters; vocab_size={vocab_size} must be at least {len(chars) + 2} "
            f"(characters + <blank> + <unk>) — raise vocab_size or train on more text."
        ) from None
    path = prefix.with_name(prefix.name + ".model")
    log.info("trained %s tokenizer %s", model_type, path)
    return path


class Tokenizer:
    """A trained sentencepiece model. `blank_id == 0` is the CTC blank.

    encode(text) → list[int] (no blank, no BOS/EOS); decode(ids) → str (blanks dropped).
    Picklable (DataLoader workers): the model bytes travel, not the file path.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"tokenizer model {self.path} does not exist")
        self._load(Path(self.path).read_bytes())

    def _load(self, proto: bytes) -> None:
        self._proto = proto
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(proto)
        if self.sp.pad_id() != BLANK_ID or self.sp.id_to_piece(BLANK_ID) != "<blank>":
            raise ValueError(f"tokenizer {self.path}: id 0 is {self.sp.id_to_piece(0)!r}, "
                             "expected the <blank> pad piece; retrain with train_tokenizer")

    def __getstate__(self) -> dict:
        return {"path": self.path, "proto": self._proto}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._load(state["proto"])

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def blank_id(self) -> int:
        return BLANK_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) != BLANK_ID])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)
