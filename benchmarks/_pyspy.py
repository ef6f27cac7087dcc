"""Sampling profiles of server processes under load, with py-spy (in the lock for this).

    with Profile([pid, ...], "prof/level-128") as prof:   # py-spy record on each pid, raw stacks
        ...                                               # the load
    prof.summary                                          # share of samples per function

`record` runs until the block ends (SIGINT makes py-spy write its file), so a profile covers
exactly the load. The raw files (`PREFIX-PID.txt`, flamegraph.pl's collapsed format) stay for
flame graphs; `summary` gives the functions holding the most samples, inclusive (on the stack)
and exclusive (at its top), summed over the processes: where a loaded server's CPU goes.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path

RATE_HZ = 100


class Profile:
    def __init__(self, pids: list[int], prefix: str | Path, top: int = 40) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise SystemExit("--profile needs py-spy (it is in the lock: bash scripts/setup.sh)")
        self.exe, self.pids, self.prefix, self.top = exe, pids, Path(prefix), top
        self.procs: list[subprocess.Popen] = []
        self.summary: dict | None = None

    def __enter__(self) -> "Profile":
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        for pid in self.pids:
            self.procs.append(subprocess.Popen(
                [self.exe, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw",
                 "--output", str(self.files()[len(self.procs)]), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def files(self) -> list[Path]:
        return [self.prefix.with_name(f"{self.prefix.name}-{pid}.txt") for pid in self.pids]

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.summary = summarize([f for f in self.files() if f.is_file()], self.top)


def summarize(files: list[Path], top: int = 40) -> dict:
    """{"samples": N, "inclusive": [[function, share], ...], "exclusive": [...]} over `files`."""
    inclusive, exclusive, total = collections.Counter(), collections.Counter(), 0
    for f in files:
        for line in f.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [fr.split(" (")[0] for fr in stack.split(";")[1:]]  # the first is the thread
            for name in set(frames):
                inclusive[name] += n
            if frames:
                exclusive[stack.split(";")[-1]] += n

    def shares(counter: collections.Counter) -> list:  # frames on (nearly) every stack say nothing: the
        # event loop's runner (main, run, Server.run, ...) sits under all but the odd sample of a helper thread
        return [[name, round(n / total, 4)] for name, n in counter.most_common() if n < 0.95 * total][:top]

    return {"samples": total, "rate_hz": RATE_HZ, "inclusive": shares(inclusive), "exclusive": shares(exclusive)}
