"""The rehearsal's data side: a LibriSpeech-sized symlink tree, and timed, memory-watched
runs of `mtspeech prepare librispeech` and lhotse's recipe on it (part of `rehearsal.py`).

The tree has train-960's shape: 281,241 utterances in 5,466 chapters of 2,338 speakers,
`LibriSpeech/<split>/SPK/CHAP/SPK-CHAP-NNNN.flac` (symlinks cycling over a pool of source
files), one `SPK-CHAP.trans.txt` per chapter and `LibriSpeech/SPEAKERS.TXT`. It has no
`*.segments.txt` sidecars, so prepare takes the real-LibriSpeech path: decode every file
and run the energy detector. Sub-trees for a fraction f hold the first f of the chapters.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tqdm import tqdm

# train-960 = train-clean-100 + train-clean-360 + train-other-500 (LibriSpeech's README).
UTTERANCES = 281_241
CHAPTERS = 5_466
SPEAKERS = 2_338
# A real split name: lhotse's recipe only accepts LibriSpeech's own part names.
SPLIT = "train-other-500"


def source_pool(corpus: Path) -> list[tuple[Path, str]]:
    """(flac, transcript) of every utterance of a LibriSpeech-layout corpus (e.g. `mtspeech synth`)."""
    pool = []
    for trans in sorted(corpus.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt_id, _, text = line.strip().partition(" ")
            flac = trans.parent / f"{utt_id}.flac"
            if text and flac.is_file():
                pool.append((flac.resolve(), text))
    if not pool:
        raise SystemExit(f"no utterances (*.trans.txt + .flac) under {corpus}; run `mtspeech synth` first")
    return pool


def build_tree(root: Path, pool: list[tuple[Path, str]], fraction: float, progress: bool = True) -> dict:
    """Write the first `fraction` of the train-960-shaped chapters under `root/LibriSpeech/SPLIT`.

    Chapter c belongs to speaker c mod SPEAKERS and holds an even share of UTTERANCES; the
    utterance with global index i links to pool[i mod len(pool)]. Returns the tree's counts.
    """
    base = root / "LibriSpeech"
    split = base / SPLIT
    split.mkdir(parents=True, exist_ok=True)
    n_chapters = max(1, round(CHAPTERS * fraction))
    per, extra = divmod(UTTERANCES, CHAPTERS)
    speakers, utts, first = set(), 0, 0
    for c in tqdm(range(n_chapters), desc=f"tree {fraction:g}", unit="chap", disable=not progress):
        n = per + (c < extra)
        spk, chap = str(100 + c % SPEAKERS), str(10_000 + c)
        folder = split / spk / chap
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for k in range(n):
            src, text = pool[(first + k) % len(pool)]
            utt = f"{spk}-{chap}-{k:04d}"
            os.symlink(src, folder / f"{utt}.flac")
            lines.append(f"{utt} {text}\n")
        (folder / f"{spk}-{chap}.trans.txt").write_text("".join(lines), encoding="utf-8")
        first += n
        utts += n
        speakers.add(spk)
    with open(base / "SPEAKERS.TXT", "w", encoding="utf-8") as f:
        f.write(";ID  |SEX| SUBSET           |MINUTES| NAME\n")
        for s in sorted(speakers, key=int):
            f.write(f"{s:<5}| {'FM'[int(s) % 2]} | {SPLIT:<16} | 25.00 | Rehearsal {s}\n")
    sidecars = next(split.rglob("*.segments.txt"), None)
    assert sidecars is None, f"{sidecars}: a sidecar would skip the energy detector"
    return {"chapters": n_chapters, "speakers": len(speakers), "utterances": utts}


# ------------------------------------------------------------------ measuring a child

def _tree_pss_kb(pid: int) -> int:
    """Summed PSS (kB) of `pid` and all its descendants, from /proc (0 once it is gone).

    PSS, not RSS: forked pool workers share the parent's pages (torch, CMUdict), which an
    RSS sum would count once per process."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next((int(l.split()[1]) for l in f if l.startswith("Pss:")), 0)
        except OSError:
            pass
    return total


def run_measured(cmd: list[str], interrupt_after_s: float | None = None, quiet: bool = False) -> dict:
    """Run `cmd` under /usr/bin/time -v; returns wall_s, rc, the largest single process's
    peak RSS (time -v), and the peak of the process tree's summed PSS (polled every 0.5 s).
    With `interrupt_after_s`, the command gets SIGINT after that many seconds (Ctrl-C)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.perf_counter()
        out = subprocess.DEVNULL if quiet else None
        # Its own session, so an interrupt reaches the whole process group as Ctrl-C does
        # (GNU time ignores SIGINT while it waits for the command).
        # SIGINT back to its default: a shell starting this script in the background (`&`)
        # ignores it, which Python would inherit and then never raise KeyboardInterrupt.
        proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", tf.name, *cmd], stdout=out, stderr=out,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        peak_kb, done = 0, threading.Event()

        def poll() -> None:
            nonlocal peak_kb
            while not done.is_set():
                peak_kb = max(peak_kb, _tree_pss_kb(proc.pid))
                done.wait(0.5)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        interrupted, exit_after_sigint_s = False, None
        try:
            proc.wait(timeout=interrupt_after_s)
        except subprocess.TimeoutExpired:
            interrupted = True
            t_int = time.perf_counter()
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
                exit_after_sigint_s = round(time.perf_counter() - t_int, 2)
            except subprocess.TimeoutExpired:  # did not stop on Ctrl-C within a minute
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wall = time.perf_counter() - t0
        done.set()
        poller.join()
        report = tf.read()
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", report))
    return {"wall_s": round(wall, 2), "rc": proc.returncode, "interrupted": interrupted,
            "exit_after_sigint_s": exit_after_sigint_s, "cpu_s": round(cpu, 1),
            "max_rss_single_mb": round(int(m.group(1)) / 1024, 1) if m else None,
            "peak_pss_tree_mb": round(peak_kb / 1024, 1)}


def prepare_cmd(root: Path, out: Path, jobs: int | None) -> list[str]:
    """`mtspeech prepare librispeech` on `root` (the child's own progress bar stays on)."""
    cmd = [sys.executable, "-m", "mtspeech.cli", "prepare", "librispeech", str(root), "--out", str(out)]
    return cmd + (["--jobs", str(jobs)] if jobs else [])


def lhotse_cmd(root: Path, out: Path, jobs: int) -> list[str]:
    """lhotse's recipe (threads: `num_jobs`) on `root/LibriSpeech`, writing jsonl.gz manifests."""
    code = ("import sys; from lhotse.recipes import prepare_librispeech as p; "
            f"p(sys.argv[1], dataset_parts=[{SPLIT!r}], output_dir=sys.argv[2], num_jobs={jobs})")
    return [sys.executable, "-c", code, str(root / "LibriSpeech"), str(out)]
