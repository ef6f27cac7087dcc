"""Shared by the tests of the corpus's extra splits (test-final, adapt-dev), which must leave
every file they did not write byte-identical. (A module name no other test folder uses: tests
import it by name.)"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root`, by its path relative to `root`."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
