"""One loader: `mtspeech serve`, `mtspeech transcribe --model` and `mtspeech evaluate` build the
same decoders (same classes, same settings, same default) from the same checkpoint and flags."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mtspeech import client
from mtspeech.decoding import loader
from mtspeech.evaluation import evaluate as evaluate_command
from mtspeech.serve import app as serve_app
from serve_helpers import lm_checkpoint, signal, wav_bytes


_LOAD = loader.load_recognizer  # the real one, whatever a test patches in


class _Built(Exception):
    """Raised by the recording loader once an entry point has built its recognizer."""


def _settings(rec) -> tuple:
    """What makes a recognizer's decoding: its default and, per decoder, class, head and options,
    with the LM and lexicon files by content (`--lm auto` writes them into each command's folder)."""
    def content(key, value):
        return Path(value).read_text() if key in ("lm", "lexicon") and value is not None else value

    return rec.default_decoder, {name: (type(d), d.head, {k: content(k, v) for k, v in d.options.items()})
                                 for name, d in rec.decoders.items()}


def _built_by(command, argv: list[str], monkeypatch) -> object:
    """The recognizer a command builds from `argv`; it stops there (no server, no decoding)."""
    built = []

    def recording(*args, **kwargs):
        built.append(_LOAD(*args, **kwargs))
        raise _Built

    monkeypatch.setattr(loader, "load_recognizer", recording)
    monkeypatch.setattr(evaluate_command, "load_recognizer", recording)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    with pytest.raises(_Built):
        command.main(parser.parse_args(argv))
    return built[0]


@pytest.mark.parametrize("flags, embed, default", [
    ([], False, "greedy"),  # auto, no LM anywhere
    ([], True, "phones"),  # auto with the LM `mtspeech embed-lm` stored
    (["--decoder", "beam", "--beam-size", "4"], False, "beam"),
    (["--lm", "auto", "--beam-size", "4", "--lm-weight", "0.7", "--word-score", "0.5", "--beam-threshold", "7"],
     False, "phones"),
])
def test_serve_transcribe_and_evaluate_build_the_same_decoder(tmp_path, monkeypatch, flags, embed, default):
    from mtspeech.decoding.embedded_lm import embed_lm

    checkpoint = lm_checkpoint(tmp_path)
    if embed:
        embed_lm(checkpoint)
    audio = tmp_path / "a.wav"
    audio.write_bytes(wav_bytes(signal(0.5)))
    # one process: each worker of `--workers N` builds its recognizer the same way
    served = _built_by(serve_app, ["--model", str(checkpoint), "--backend", "torch-eager", "--workers", "1", *flags],
                       monkeypatch)
    transcribed = _built_by(client, [str(audio), "--model", str(checkpoint), *flags], monkeypatch)
    evaluated = _built_by(evaluate_command, [str(checkpoint), str(tmp_path / "train.jsonl"),
                                             "--out", str(tmp_path / "eval"), *flags], monkeypatch)
    assert served.default_decoder == default
    assert _settings(served) == _settings(transcribed) == _settings(evaluated)
    if "--beam-size" in flags:
        assert {d.options["beam_size"] for name, d in served.decoders.items() if name != "greedy"} == {4}
    if "--beam-threshold" in flags:
        assert {d.options["beam_threshold"] for name, d in served.decoders.items() if name != "greedy"} == {7.0}


def test_evaluate_decodes_with_the_recognizers_settings(tmp_path):
    """What `evaluate` decodes whole batches with is the loader's decoder, batched: the same
    class of search and the same options."""
    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.decoding.ctc import BeamSearchDecoder, GreedyDecoder

    rec = loader.load_recognizer(lm_checkpoint(tmp_path), DecodingConfig(lm="auto", beam_size=4), "torch-eager",
                                 work_dir=tmp_path)
    assert isinstance(loader.batch_decoder(rec.decoders["greedy"], rec.tokenizer), GreedyDecoder)
    beam = loader.batch_decoder(rec.decoders["beam"], rec.tokenizer)
    assert isinstance(beam, BeamSearchDecoder) and beam._lexicon  # the LM's words, through its lexicon


def test_lexicon_extra_reaches_every_entry_point_and_needs_an_lm(tmp_path, monkeypatch):
    """`--lexicon-extra FILE`: serve, transcribe and evaluate decode with the same extended LM and
    lexicons, which spell its words; without an LM it is refused before the model loads."""
    from mtspeech.decoding.config import DecodingConfig, DecodingError

    checkpoint = lm_checkpoint(tmp_path)
    extra = tmp_path / "extra.txt"
    extra.write_text("DOGS\nBLORF B L AO R F\n")
    audio = tmp_path / "a.wav"
    audio.write_bytes(wav_bytes(signal(0.5)))
    flags = ["--lm", "auto", "--lexicon-extra", str(extra)]
    served = _built_by(serve_app, ["--model", str(checkpoint), "--backend", "torch-eager", "--workers", "1", *flags],
                       monkeypatch)
    evaluated = _built_by(evaluate_command, [str(checkpoint), str(tmp_path / "train.jsonl"),
                                             "--out", str(tmp_path / "eval"), *flags], monkeypatch)
    assert _settings(served) == _settings(evaluated)
    phones = Path(served.decoders["phones"].options["lexicon"]).read_text().splitlines()
    assert {"DOGS\tD AA G Z", "BLORF\tB L AO R F"} <= set(phones)
    assert "BLORF" in Path(served.decoders["beam"].options["lexicon"]).read_text()
    with pytest.raises(DecodingError, match="--lexicon-extra"):
        _LOAD(checkpoint, DecodingConfig(decoder="greedy", lexicon_extra=str(extra)), "torch-eager")
    with pytest.raises(DecodingError, match="no such file"):
        _LOAD(checkpoint, DecodingConfig(lm="auto", lexicon_extra=str(tmp_path / "nope.txt")), "torch-eager")
