"""Offline CTC decoding of batches: greedy, prefix beam search (+ word n-gram LM), word times.

What `mtspeech evaluate` decodes with. Decoders are small strategy objects (whisper style) with one method,
`decode(log_probs (B,T,V) float, lens (B,) int) -> list[Hypothesis]`; `build_decoder`
picks one by name. The blank is token 0 (the tokenizer's `<blank>` pad piece).

Beam search backend: torchaudio's `ctc_decoder`, i.e. flashlight-text's C++ CTC beam
decoder (pip `flashlight-text`, whose wheel bundles KenLM, so ARPA files from
`mtspeech.decoding.lm.build_ngram_lm` load directly). It scores with `log_add=False` by default:
a hypothesis keeps the score of its best alignment, which makes the greedy path (the
best alignment of all) unprunable, so without an LM the beam's best score is never
below greedy's. A word LM needs a lexicon (word -> pieces); flashlight's lexicon-free
decoder would apply the LM to pieces, not words. With an LM and no lexicon file we
write one from the LM's vocabulary, so decoding is closed-vocabulary in that case.

The best-path collapse and the word-time scheme are `mtspeech/alignment.py`'s, shared with
the CTC task's metrics and the streaming decoders; beam and LM defaults are
`DecodingConfig`'s (`decoding/config.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from mtspeech.alignment import BLANK_ID, Word, ctc_runs, word_alignments
from mtspeech.decoding.config import DecodingConfig

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
    """The part of `mtspeech.text.tokenizer.Tokenizer` decoding uses."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def id_to_piece(self, i: int) -> str: ...


class PhoneTable:
    """The `Tokenizer` interface over a phone CTC head's labels (id 0 the blank, id i
    `phones[i-1]`), so the beam decoder can spell lexicon words in phones."""

    def __init__(self, phones: list[str]):
        self.phones = list(phones)
        self.vocab_size = len(self.phones) + 1
        self._ids = {p: i + 1 for i, p in enumerate(self.phones)}

    def id_to_piece(self, i: int) -> str:
        return "<blank>" if i == BLANK_ID else self.phones[i - 1]

    def encode(self, text: str) -> list[int]:
        return [self._ids[p] for p in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.phones[i - 1] for i in ids if 0 < i <= len(self.phones))


@dataclass
class Hypothesis:
    """One decoded utterance.

    `tokens`: emitted token ids (blanks and repeats collapsed); `token_frames[i]`: the
    encoder frame where `tokens[i]` is first emitted; `score`: natural-log score of the
    best alignment (plus LM and word terms for an LM decoder); `words`: filled by
    `word_alignments` when times are asked for.
    """

    tokens: list[int]
    text: str
    score: float
    token_frames: list[int]
    words: list[Word] | None = field(default=None)


def _check_inputs(log_probs: torch.Tensor, lens: torch.Tensor) -> None:
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    if lens.shape != (log_probs.shape[0],):
        raise ValueError(f"lens must be (B,)={log_probs.shape[0]}, got shape {tuple(lens.shape)}")
    if lens.numel() and int(lens.max()) > log_probs.shape[1]:
        raise ValueError(f"a length in lens exceeds T={log_probs.shape[1]}")


class GreedyDecoder:
    """Best path: argmax per frame, merge repeats, drop blanks (`ctc_runs`)."""

    def __init__(self, tokenizer: Tokenizer, blank_id: int = BLANK_ID):
        self.tokenizer = tokenizer
        self.blank_id = blank_id

    def decode(self, log_probs: torch.Tensor, lens: torch.Tensor) -> list[Hypothesis]:
        """log_probs (B,T,V) log-softmax output, lens (B,) valid frames -> B hypotheses."""
        _check_inputs(log_probs, lens)
        best, ids = log_probs.detach().float().max(dim=-1)  # (B,T), (B,T)
        out = []
        for b in range(log_probs.shape[0]):
            n = int(lens[b])
            runs = [(tok, first) for tok, first, _ in ctc_runs(ids[b, :n]) if tok != self.blank_id]
            tokens, frames = [tok for tok, _ in runs], [first for _, first in runs]
            score = float(best[b, :n].sum())
            out.append(Hypothesis(tokens, self.tokenizer.decode(tokens), score, frames))
        return out


class BeamSearchDecoder:
    """CTC prefix beam search (flashlight via torchaudio), optionally with a word n-gram LM.

    `lm`: path of an ARPA (or KenLM binary) word LM; `lexicon`: flashlight lexicon file
    (`WORD<tab>piece piece ...`, see `mtspeech.decoding.lm.build_lexicon`), written from the LM's
    vocabulary when omitted. Score = acoustic + lm_weight * LM + word_score * words.
    `log_add=True` sums alignments of a prefix instead of keeping the best one.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        beam_size: int = DecodingConfig.beam_size,
        lm: str | Path | None = None,
        lexicon: str | Path | None = None,
        lm_weight: float = DecodingConfig.lm_weight,
        word_score: float = DecodingConfig.word_score,
        beam_size_token: int | None = None,
        beam_threshold: float = DecodingConfig.beam_threshold,
        log_add: bool = False,
        nbest: int = 1,
    ):
        from torchaudio.models.decoder import ctc_decoder  # needs flashlight-text

        self.tokenizer = tokenizer
        self.nbest = nbest
        pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
        blank = pieces[BLANK_ID]
        if lm is not None and lexicon is None:
            lexicon = lexicon_for_lm(Path(lm), tokenizer)
        self._lexicon = lexicon is not None
        self._decoder = ctc_decoder(
            lexicon=str(lexicon) if lexicon is not None else None,
            tokens=pieces,
            lm=str(lm) if lm is not None else None,
            nbest=nbest,
            beam_size=beam_size,
            beam_size_token=beam_size_token,
            beam_threshold=beam_threshold,
            lm_weight=lm_weight if lm is not None else 0.0,
            word_score=word_score,
            # sentencepiece marks word starts inside pieces and has no silence token;
            # the blank plays that role (flashlight allows sil == blank).
            sil_token=blank,
            sil_score=0.0,
            blank_token=blank,
            unk_word="<unk>",
            log_add=log_add,
        )

    def decode_nbest(self, log_probs: torch.Tensor, lens: torch.Tensor) -> list[list[Hypothesis]]:
        """log_probs (B,T,V), lens (B,) -> for each utterance up to `nbest` hypotheses, best first."""
        _check_inputs(log_probs, lens)
        # flashlight reads a contiguous float32 CPU buffer
        emissions = log_probs.detach().to("cpu", torch.float32).contiguous()
        results = self._decoder(emissions, lens.detach().to("cpu", torch.int32))
        out = []
        for hyps in results:
            row = []
            for h in hyps:
                tokens = h.tokens.tolist()
                # torchaudio counts frames from flashlight's leading silence step: shift by one
                frames = (h.timesteps - 1).clamp(min=0).tolist()
                # With a lexicon the words are flashlight's own: the token path can glue
                # pieces across a blank "silence" into a string that is no lexicon word.
                text = " ".join(h.words) if self._lexicon else self.tokenizer.decode(tokens)
                row.append(Hypothesis(tokens, text, float(h.score), frames))
            out.append(row or [Hypothesis([], "", float("-inf"), [])])
        return out

    def decode(self, log_probs: torch.Tensor, lens: torch.Tensor) -> list[Hypothesis]:
        """log_probs (B,T,V), lens (B,) -> the best hypothesis per utterance."""
        return [row[0] for row in self.decode_nbest(log_probs, lens)]


def lexicon_for_lm(lm_path: Path, tokenizer: Tokenizer) -> Path:
    """Write `<lm>.lexicon.txt` spelling every word of an ARPA LM with the tokenizer (pieces)."""
    from mtspeech.decoding.lm import ArpaLM, build_lexicon

    if lm_path.suffix != ".arpa":
        raise ValueError(f"LM {lm_path} is not an .arpa file: pass lexicon= explicitly for binary LMs")
    out = lm_path.with_suffix(".lexicon.txt")
    return build_lexicon(ArpaLM.load(lm_path).vocab, tokenizer, out)


DECODERS: dict[str, type] = {"greedy": GreedyDecoder, "beam": BeamSearchDecoder}


def build_decoder(kind: str, tokenizer: Tokenizer, **options) -> GreedyDecoder | BeamSearchDecoder:
    """Make a decoder by name ("greedy" or "beam"); options go to its constructor."""
    if kind not in DECODERS:
        raise ValueError(f"unknown decoder kind {kind!r}; choose one of {sorted(DECODERS)}")
    return DECODERS[kind](tokenizer, **options)


def add_word_times(
    hyps: list[Hypothesis],
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    tokenizer: Tokenizer,
    frame_shift_s: float,
) -> list[Hypothesis]:
    """Fill `hyp.words` for each hypothesis of a batch: log_probs (B,T,V), lens (B,)."""
    _check_inputs(log_probs, lens)
    for b, hyp in enumerate(hyps):
        hyp.words = word_alignments(log_probs[b, : int(lens[b])], hyp.tokens, tokenizer, frame_shift_s)
    return hyps
