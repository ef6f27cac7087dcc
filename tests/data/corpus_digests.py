"""Shared by the tests of the corpus's extra splits (test-final, adapt-dev), which must leave
every file they did not write byte-identical. (A module name no other test folder uses: tests
import it by name.)"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path


def file_digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root`, by its path relative to `root`."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def copied_corpus(corpus: Path, tmp_path: Path) -> tuple[Path, dict[str, str], argparse.ArgumentParser]:
    """A copy of `corpus` to write an extra split into, its files' digests before, and
    `mtspeech synth`'s argument parser."""
    from mtspeech.data.synth_command import add_arguments

    root = tmp_path / "corpus"
    shutil.copytree(corpus, root)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return root, file_digests(root), parser
