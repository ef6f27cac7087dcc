"""The `mtspeech` command line: every sub-command is listed, and running one declares (and
imports) only that one; `mtspeech --help` declares none."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from mtspeech.cli import _COMMANDS, build_parser, main


def test_prepare_does_not_import_torch():
    # A fresh interpreter: this test process has torch loaded already.
    code = ("import sys; from mtspeech.cli import build_parser; "
            "build_parser(['prepare', 'librispeech', 'x']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_chosen_command_still_parses_its_own_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["-v", "analyze", "--train"])  # --train needs a value
    assert e.value.code == 2 and "--train" in capsys.readouterr().err


def _imports_after(argv: list[str]) -> dict:
    """In a fresh interpreter (this test process has torch loaded already): run `mtspeech ARGV`,
    then report its exit status and which modules it had imported."""
    code = ("import json, sys; from mtspeech.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("argv, code", [(["--help"], 0), ([], 2), (["-v"], 2)])
def test_top_level_help_lists_without_importing_any_command(argv, code):
    ran = _imports_after(argv)
    assert ran["code"] == code
    ours = [m for m in ran["modules"] if m.split(".")[0] in ("mtspeech", "serve")]
    assert ours == ["mtspeech", "mtspeech.cli"]
    assert "torch" not in ran["modules"]


def test_top_level_help_gives_each_command_its_one_line_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    listed = " ".join(capsys.readouterr().out.split())  # argparse wraps long help lines
    for name, help, _ in _COMMANDS:
        assert f"{name} {' '.join(help.split())}" in listed


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("name", [name for name, _, _ in _COMMANDS])
def test_a_named_command_declares_its_full_arguments(name):
    """`mtspeech NAME --help` shows NAME's own arguments, not the listing's bare stub."""
    p = _subparser(build_parser([name, "--help"]), name)
    assert len(p._actions) > 1, f"`mtspeech {name}` declares no arguments"
    assert p.get_default("func") is not None or p._subparsers is not None
    listed = _subparser(build_parser(["--help"]), name)
    assert len(listed._actions) == 1  # listed by name and help only: -h
