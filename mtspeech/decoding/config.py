"""`DecodingConfig`: which token decoder, its beam and its word LM; the one set of defaults.

Every entry point that decodes (`mtspeech serve`, `mtspeech transcribe --model`, `mtspeech
evaluate`, the ablation runner, the benchmarks) declares the same flags with `add_arguments`,
reads them back with `from_args` and hands the config to `decoding.loader.load_recognizer`,
so the same checkpoint and the same flags give the same decoder everywhere.

The defaults were chosen on the synthetic demo's `dev` set: beam 20 (dev CER of the phone
head's words 4.1 % at beam 10, 2.9 % at 20; commit 932b33d) and LM weight 1.0, the weight
every committed word-LM result uses (recipes/synthetic/run.sh, docs/results/demo/).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

DECODER_KINDS = ("auto", "greedy", "beam", "phones")
# What runs the encoder chunk and heads (`decoding.loader.load_recognizer`): PyTorch with its full
# chunks traced to one TorchScript graph, PyTorch eager, or the ONNX export under onnxruntime.
BACKENDS = ("torch", "torch-eager", "onnx")


class DecodingError(ValueError):
    """A decoding setting that cannot work (a missing LM file, phones without an LM, ...);
    the message names the flag or file."""


@dataclass(frozen=True)
class DecodingConfig:
    """How log-probs become words.

    `decoder`: the default decoder of streams (and the ASR head's decoder in `evaluate`):
      - `auto`: the best one the checkpoint allows on its own: with a word LM (embedded by
        `mtspeech embed-lm`, or given as `lm`) words through the phone head if the model has
        one, else beam search over the ASR pieces; without any LM, greedy;
      - `greedy`: best-path CTC over the ASR pieces;
      - `beam`: prefix beam search over the ASR pieces (with `lm`, through a piece lexicon);
      - `phones`: beam search over the phone head, words spelled through CMUdict (needs `lm`).
    `lm`: an ARPA (or KenLM binary) word LM, or `auto`: the LM embedded in the checkpoint, else
    an `lm_order`-gram of the training transcripts named in its config.
    `beam_size`, `lm_weight`, `word_score`: the beam search's (score = acoustic + lm_weight *
    LM + word_score * words). `beam_threshold`: each frame the search keeps only hypotheses
    scoring within this much (log domain) of the best (`benchmarks/beam_threshold.py`).
    `lexicon_extra`: a file of words added to the LM (at a unigram back-off) and to the lexicons,
    spelled by CMUdict or the G2P model (`decoding/vocabulary.py`); needs an LM.
    """

    decoder: str = "auto"
    lm: str | None = None
    beam_size: int = 20
    lm_weight: float = 1.0
    word_score: float = 0.0
    beam_threshold: float = 8.0  # chosen on dev: docs/results/beam-threshold/
    lm_order: int = 3
    lexicon_extra: str | None = None

    def __post_init__(self) -> None:
        if self.decoder not in DECODER_KINDS:
            raise DecodingError(f"decoder {self.decoder!r}: choose one of {DECODER_KINDS}")
        if self.decoder == "phones" and self.lm is None:
            raise DecodingError("--decoder phones needs a word LM: pass --lm ARPA or --lm auto")
        if self.beam_size < 1:
            raise DecodingError(f"beam_size={self.beam_size}: expected >= 1")
        if not self.beam_threshold > 0:
            raise DecodingError(f"beam_threshold={self.beam_threshold}: expected > 0")
        if self.lm_order < 1:
            raise DecodingError(f"lm_order={self.lm_order}: expected >= 1")

    @classmethod
    def from_options(cls, options: dict) -> tuple["DecodingConfig", dict]:
        """Split a dict of keyword options (an ablation grid's `evaluate:` block) into a
        DecodingConfig of its decoding keys and the rest."""
        names = {f.name for f in fields(cls)}
        rest = {k: v for k, v in options.items() if k not in names}
        cfg = cls(**{k: (str(v) if k in ("lm", "lexicon_extra") and v is not None else v) for k, v in options.items() if k in names})
        return cfg, rest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding flags every decoding command shares, with `DecodingConfig`'s defaults."""
    d = DecodingConfig()
    parser.add_argument("--decoder", choices=DECODER_KINDS, default=d.decoder,
                        help="token decoder: auto (the best the checkpoint allows: phones if it has a phone "
                             "head and an LM, embedded by `mtspeech embed-lm` or given by --lm; else beam with "
                             "an LM; else greedy); greedy CTC; beam (prefix beam search over the ASR pieces, "
                             "with --lm through a piece lexicon); phones (beam search over the phone head, "
                             "words through CMUdict; needs an LM)")
    parser.add_argument("--lm", default=d.lm, metavar="ARPA|auto",
                        help="word n-gram LM for the beam decoders; 'auto': the one embedded in the checkpoint, "
                             "else a trigram of the training transcripts named in it")
    parser.add_argument("--beam-size", type=int, default=d.beam_size)
    parser.add_argument("--lm-weight", type=float, default=d.lm_weight)
    parser.add_argument("--word-score", type=float, default=d.word_score)
    parser.add_argument("--beam-threshold", type=float, default=d.beam_threshold,
                        help="beam pruning: keep hypotheses within this log-score of the best each frame")
    parser.add_argument("--lm-order", type=int, default=d.lm_order, help="n-gram order of --lm auto")
    parser.add_argument("--lexicon-extra", default=d.lexicon_extra, metavar="FILE",
                        help="words to add to the LM and the lexicons, one a line (optionally followed by its "
                             "ARPAbet phones; otherwise CMUdict, else the G2P model spells it); needs an LM")


def from_args(args: argparse.Namespace) -> DecodingConfig:
    """The DecodingConfig of parsed `add_arguments` flags; raises DecodingError."""
    return DecodingConfig(decoder=args.decoder, lm=args.lm, beam_size=args.beam_size, lm_weight=args.lm_weight,
                          word_score=args.word_score, beam_threshold=args.beam_threshold, lm_order=args.lm_order,
                          lexicon_extra=args.lexicon_extra)
