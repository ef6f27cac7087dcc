"""The `mtspeech` command line: every sub-command is listed, and running one declares (and
imports) only that one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtspeech.cli import _COMMANDS, main


def test_prepare_does_not_import_torch():
    # A fresh interpreter: this test process has torch loaded already.
    code = ("import sys; from mtspeech.cli import build_parser; "
            "build_parser(['prepare', 'librispeech', 'x']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name, _, _ in _COMMANDS)


def test_a_chosen_command_still_parses_its_own_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["-v", "analyze", "--train"])  # --train needs a value
    assert e.value.code == 2 and "--train" in capsys.readouterr().err
