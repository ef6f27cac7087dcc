"""Fingerprinted part files: how a long `prepare` run resumes after Ctrl-C or kill -9.

A run splits its work into units (chapters), writes each unit's result as one part file in a
work folder and only at the end joins the parts into the output. A part file is JSON Lines:
the first line a header (the unit's statistics and the fingerprint of its inputs), the rest
the unit's output lines. Parts are written to a temporary name and renamed, so a part either
exists whole or not at all; a re-run reuses every part whose fingerprint still matches its
inputs (file names, sizes, mtimes, inodes, and the run's settings) and redoes the others.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

PART_SUFFIX = ".part.jsonl"
_TMP_MARK = ".tmp-"  # `<part>.tmp-<pid>`: what a killed run leaves behind


def fingerprint(paths: Iterable[str | os.PathLike], settings: dict) -> str:
    """SHA-1 of `settings` (JSON-able) and each path's name, size, mtime and inode.

    Symlinks are followed, so a link retargeted or a linked file rewritten changes the
    fingerprint; a path that cannot be stat-ed (dangling link) enters as its name alone.
    """
    entries = []
    for p in paths:
        try:
            st = os.stat(p)
            entries.append([os.fspath(p), st.st_size, st.st_mtime_ns, st.st_ino])
        except OSError:
            entries.append([os.fspath(p), None])
    blob = json.dumps([settings, entries], sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def read_header(path: Path) -> dict | None:
    """The header of part `path`, or None if it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def write_part(path: Path, header: dict, lines: Iterable[str]) -> None:
    """Write a part atomically: header line, then `lines` (each without its newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(header, ensure_ascii=False) + "\n")
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def remove_leftovers(folder: Path, keep: set[Path]) -> int:
    """Delete temporary files of killed runs and parts not in `keep` (units that no longer
    exist) under `folder`; returns how many files went. Only this module's names are touched."""
    removed = 0
    if not folder.is_dir():
        return 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            p = Path(dirpath) / name
            if _TMP_MARK in name or (name.endswith(PART_SUFFIX) and p not in keep):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def join_parts(parts: Iterable[Path], out: Path) -> None:
    """Concatenate the parts' output lines (headers dropped), in order, into `out` atomically."""
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as dst:
        for part in parts:
            with open(part, encoding="utf-8") as src:
                src.readline()
                for line in src:
                    dst.write(line)
    os.replace(tmp, out)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole text file via a temporary name and a rename (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
