"""`prepare librispeech` resumes: a run killed (SIGKILL) or interrupted (Ctrl-C) midway and
run again reuses its finished chapters and writes the bytes an uninterrupted run writes."""

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtspeech.data.librispeech import WORK_DIR, prepare_librispeech

SPLIT = "train-clean-100"
CHAPTERS = 12
PER_CHAPTER = 4


@pytest.fixture
def chapter_tree(synth_corpus, tmp_path) -> Path:
    """A LibriSpeech tree of CHAPTERS chapters (3 speakers) linking to the synthetic corpus's
    train audio, without segment sidecars, so prepare decodes and runs the energy detector."""
    pool = []
    for trans in sorted((synth_corpus / "train").glob("*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            pool.append((trans.parent / f"{utt}.flac", text))
    root = tmp_path / "corpus"
    for c in range(CHAPTERS):
        spk, chap = str(100 + c % 3), str(2000 + c)
        folder = root / SPLIT / spk / chap
        folder.mkdir(parents=True)
        lines = []
        for k in range(PER_CHAPTER):
            src, text = pool[(c * PER_CHAPTER + k) % len(pool)]
            utt = f"{spk}-{chap}-{k:04d}"
            (folder / f"{utt}.flac").symlink_to(src)
            lines.append(f"{utt} {text}\n")
        (folder / f"{spk}-{chap}.trans.txt").write_text("".join(lines))
    (root / "SPEAKERS.TXT").write_text("100 | F | x | 1 | A\n101 | M | x | 1 | B\n102 | F | x | 1 | C\n")
    return root


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in (f"{SPLIT}.jsonl", f"{SPLIT}.rejected.txt", "summary.json")}


def _reused(caplog) -> tuple[int, int]:
    """(reused, total) chapters from prepare's log line."""
    m = re.search(r"(\d+) of (\d+) chapters reused", caplog.text)
    assert m, caplog.text
    return int(m.group(1)), int(m.group(2))


def _parts(out: Path) -> list[Path]:
    return sorted((out / WORK_DIR).rglob("*.part.jsonl"))


# The child slows every file down so that it can be stopped with some chapters done; the
# workers are forked, so they inherit the patched _probe.
_SLOW_PREPARE = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the caller ignores Ctrl-C
from mtspeech.data import librispeech
real = librispeech._probe
def slow(item):
    time.sleep(0.15)
    return real(item)
librispeech._probe = slow
librispeech.prepare_librispeech(sys.argv[1], sys.argv[2], oov="missing", jobs=2, progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_stopped_prepare_resumes_to_the_same_bytes(chapter_tree, tmp_path, caplog, sig):
    prepare_librispeech(chapter_tree, tmp_path / "reference", oov="missing", jobs=1, progress=False)
    out = tmp_path / "resumed"  # same depth as reference: same relative audio paths
    child = subprocess.Popen([sys.executable, "-c", _SLOW_PREPARE, str(chapter_tree), str(out)],
                             start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_parts(out)) < 3 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(child.pid, sig)  # the whole group, as a terminal's Ctrl-C or an OOM kill does
    assert child.wait(timeout=30) != 0, "prepare finished before it could be stopped"
    time.sleep(0.2)  # SIGKILL: workers die with the parent; let the kernel reap them
    done = len(_parts(out))
    assert 3 <= done < CHAPTERS
    assert not (out / f"{SPLIT}.jsonl").exists()  # the manifest appears only whole

    with caplog.at_level(logging.INFO, logger="mtspeech.data.librispeech"):
        prepare_librispeech(chapter_tree, out, oov="missing", jobs=1, progress=False)
    assert _reused(caplog) == (done, CHAPTERS)
    assert _outputs(out) == _outputs(tmp_path / "reference")
    leftovers = [p for p in (out / WORK_DIR).rglob("*") if ".tmp-" in p.name]
    assert leftovers == [], "a killed writer's temporary files are cleaned up"


def test_changed_chapter_is_redone_and_the_rest_reused(chapter_tree, tmp_path, caplog):
    out = tmp_path / "a"
    prepare_librispeech(chapter_tree, out, oov="missing", jobs=1, progress=False)
    chapters = sorted(p for p in (chapter_tree / SPLIT).glob("*/*") if p.is_dir())
    trans = next(chapters[0].glob("*.trans.txt"))
    first_id = trans.read_text().split()[0]
    trans.write_text(trans.read_text().replace(f"{first_id} ", f"{first_id} HELLO ", 1))
    os.utime(trans, ns=(0, trans.stat().st_mtime_ns + 10**9))  # coarse-mtime file systems
    for f in chapters[-1].iterdir():  # a chapter gone from the tree leaves the manifest
        f.unlink()
    chapters[-1].rmdir()

    with caplog.at_level(logging.INFO, logger="mtspeech.data.librispeech"):
        prepare_librispeech(chapter_tree, out, oov="missing", jobs=1, progress=False)
    assert _reused(caplog) == (CHAPTERS - 2, CHAPTERS - 1)
    manifest = (out / f"{SPLIT}.jsonl").read_text()
    assert f'"id": "{first_id}", ' in manifest and '"text": "HELLO ' in manifest
    assert chapters[-1].name not in manifest
    assert len(_parts(out)) == CHAPTERS - 1
    prepare_librispeech(chapter_tree, tmp_path / "b", oov="missing", jobs=1, progress=False)
    assert _outputs(out) == _outputs(tmp_path / "b")


def test_changed_settings_redo_every_chapter(chapter_tree, tmp_path, caplog):
    out = tmp_path / "out"
    prepare_librispeech(chapter_tree, out, oov="missing", jobs=1, progress=False)
    with caplog.at_level(logging.INFO, logger="mtspeech.data.librispeech"):
        prepare_librispeech(chapter_tree, out, oov="g2p", jobs=1, progress=False)
    assert _reused(caplog) == (0, CHAPTERS)
