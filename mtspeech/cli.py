"""The `mtspeech` command.

Each sub-command is one `_add_<name>(subparsers)` function that declares its arguments and
points `func` at a small runner. Only the sub-command being run is declared: declaring imports
its module (most import torch), so `mtspeech --help` lists the others by name and help alone,
answers at once, and a broken optional part never breaks the rest.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="synthesize the embedded LibriSpeech-format demo corpus")
    p.set_defaults(func=_run_synth)
    # Arguments are declared by the synthesizer itself so they live next to their code.
    from mtspeech.data import synth_command

    synth_command.add_arguments(p)


def _run_synth(args: argparse.Namespace) -> int:
    from mtspeech.data import synth_command

    return synth_command.main(args)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="scan a corpus into JSON Lines manifests")
    kinds = p.add_subparsers(dest="corpus", required=True)
    lib = kinds.add_parser("librispeech", help="a LibriSpeech-layout tree (real or synthetic)")
    lib.set_defaults(func=_run_prepare_librispeech)
    from mtspeech.data import librispeech

    librispeech.add_arguments(lib)
    cuts = kinds.add_parser("lhotse", help="a lhotse CutSet (icefall, NeMo) in JSON Lines")
    cuts.set_defaults(func=_run_prepare_lhotse)
    from mtspeech.data import lhotse_import  # imports lhotse itself only when run

    lhotse_import.add_arguments(cuts)


def _run_prepare_librispeech(args: argparse.Namespace) -> int:
    from mtspeech.data import librispeech

    return librispeech.main(args)


def _run_prepare_lhotse(args: argparse.Namespace) -> int:
    from mtspeech.data import lhotse_import

    return lhotse_import.main(args)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a multi-task model (resumes from EXP_DIR/last.pt)",
                       description="Single process, or DDP under torchrun (WORLD_SIZE>1).")
    p.add_argument("--config", required=True, help="experiment YAML (may name a `base:`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set optim.lr=1e-3 (repeatable; null deletes)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from mtspeech.experiment import load_experiment
    from mtspeech.train import train

    train(load_experiment(args.config, args.overrides))
    return 0


def _add_module_command(name: str, module: str, help: str):
    """A sub-command whose arguments and runner live in `module` (add_arguments / main)."""

    def add(sub: argparse._SubParsersAction) -> None:
        import importlib

        p = sub.add_parser(name, help=help)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(func=lambda args: importlib.import_module(module).main(args))

    return add


# (name, help, full declaration). Order here is the order in `mtspeech --help`.
_COMMANDS = [
    ("synth", "synthesize the embedded LibriSpeech-format demo corpus", _add_synth),
    ("prepare", "scan a corpus into JSON Lines manifests", _add_prepare),
    ("train", "train a multi-task model (resumes from EXP_DIR/last.pt)", _add_train),
    *((name, help, _add_module_command(name, module, help)) for name, module, help in [
        ("evaluate", "mtspeech.evaluation.evaluate", "evaluate a checkpoint on a manifest (every task)"),
        ("compare", "mtspeech.evaluation.compare", "paired bootstrap: model B's error rate minus model A's, same utterances"),
        ("embed-lm", "mtspeech.decoding.embedded_lm", "store a word LM inside a checkpoint (for --lm auto)"),
        ("ablate", "mtspeech.ablation.cli", "train and evaluate a grid of task sets × seeds; report"),
        ("analyze", "mtspeech.analyze", "word accuracy by training-sentence count, from evaluate's hypotheses"),
        ("export", "mtspeech.export.command", "export the streaming encoder and heads to ONNX (optionally int8)"),
        ("adapt", "mtspeech.adaptation.command", "fit a model to a new voice from k (transcribed) utterances"),
        ("meta-train", "mtspeech.adaptation.reptile", "meta-learn adapt's starting values across training voices (Reptile)"),
        ("train-speaker-adapter", "mtspeech.adaptation.train_speaker_adapter",
         "learn to adapt from the speaker head's embedding alone (adapt --params speaker-embedding)"),
        ("transcribe", "mtspeech.client", "transcribe files locally or through a server"),
        ("serve", "mtspeech.serve.app", "run the streaming recognition server"),
    ]),
]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with full arguments for the sub-command named in `argv` only; the others
    (all of them for `mtspeech --help` or a bare `mtspeech`) are listed by name and help.
    Declaring a sub-command imports its module, and most import torch: declaring them all
    made `mtspeech --help` take seconds and most of a gigabyte (benchmarks/cli_startup.py)."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="mtspeech", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help, add in _COMMANDS:
        if name == chosen:
            add(sub)
        else:
            sub.add_parser(name, help=help)  # listed, not declared
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
