"""How fast `mtspeech --help` answers: wall time and peak RSS, against baselines of the same run.

Every command starts a fresh interpreter (this one) as `python -m mtspeech.cli ...`, which
imports what the `mtspeech` script imports; the rounds are interleaved so that a change of
load on the machine hits every command alike. A row gives the median and the range over
`--repeats` rounds. The baselines: the bare interpreter (`python -c pass`), `mtspeech prepare
--help` (a sub-command that imports no torch), and every sub-command declared at once, which is
what `mtspeech --help` did before it only listed them (issue 32). Run it with the Python of an
environment where this checkout is installed (`mtspeech.serve` exists only once installed).

    python benchmarks/cli_startup.py --repeats 7 --out docs/results/cli-startup/cli-startup.json
    python benchmarks/cli_startup.py --render docs/results/cli-startup/cli-startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import run_main  # noqa: E402

# What `build_parser` did for `mtspeech --help` before: declare (and so import) every sub-command.
DECLARE_ALL = ("import argparse; from mtspeech.cli import _COMMANDS; "
               "sub = argparse.ArgumentParser().add_subparsers(); [add(sub) for _, _, add in _COMMANDS]")
# (label, arguments after `python`, the exit status it must end with)
COMMANDS = [
    ("python -c pass", ["-c", "pass"], 0),
    ("mtspeech --help", ["-m", "mtspeech.cli", "--help"], 0),
    ("mtspeech (no arguments)", ["-m", "mtspeech.cli"], 2),  # argparse: a sub-command is required
    ("mtspeech prepare --help", ["-m", "mtspeech.cli", "prepare", "--help"], 0),
    ("every sub-command declared (the old --help)", ["-c", DECLARE_ALL], 0),
]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--repeats", type=int, default=7, help="rounds; each runs every command once (at least 5 for a figure)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--render", metavar="JSON", help="print the table of an earlier --out file; measure nothing")


def measure(args: list[str], expect_rc: int) -> dict:
    """One run of `python ARGS`: wall seconds, CPU seconds and peak RSS (MB) of the child."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: nothing to drain while waiting
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=stderr)
        # wait4 gives this child's own resource use; RUSAGE_CHILDREN would keep the largest of all.
        _, status, usage = os.wait4(proc.pid, 0)
        wall_s = time.perf_counter() - t0
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        if rc != expect_rc:
            stderr.seek(0)
            raise SystemExit(f"python {' '.join(args)} exited {rc}, expected {expect_rc}:\n"
                             + stderr.read().decode(errors="replace"))
    return {"wall_s": wall_s, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def _commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run(args: argparse.Namespace) -> dict:
    if args.render:
        return json.loads(Path(args.render).read_text())
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in COMMANDS}
    load_start = [round(x, 2) for x in os.getloadavg()]
    for _ in range(args.repeats):
        for label, cmd, rc in COMMANDS:
            runs[label].append(measure(cmd, rc))
    rows = [{"command": label, "argv": ["python", *cmd],
             **{k: _summary([r[k] for r in runs[label]]) for k in ("wall_s", "cpu_s", "rss_mb")}}
            for label, cmd, _ in COMMANDS]
    return {"repeats": args.repeats, "commit": _commit(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_start": load_start,
            "load_end": [round(x, 2) for x in os.getloadavg()], "rows": rows}


def render(result: dict) -> str:
    base = {r["command"]: r for r in result["rows"]}
    python_s = base["python -c pass"]["wall_s"]["median"]
    lines = [f"{result['repeats']} rounds, {result['cpus']} CPUs, load average {result['load_start']} -> "
             f"{result['load_end']}, commit {result['commit']}",
             f"{'command':45} {'wall s median [min, max]':>25} {'CPU s':>6} {'peak RSS MB median [min, max]':>29}"]
    for r in result["rows"]:
        w, c, m = r["wall_s"], r["cpu_s"], r["rss_mb"]
        lines.append(f"{r['command']:45} {w['median']:8.3f} [{w['min']:6.3f}, {w['max']:6.3f}] {c['median']:6.3f} "
                     f"{m['median']:12.0f} [{m['min']:6.0f}, {m['max']:6.0f}]")
    helped = base["mtspeech --help"]["wall_s"]["median"]
    old = base["every sub-command declared (the old --help)"]["wall_s"]["median"]
    lines.append(f"mtspeech --help: {helped:.3f} s median ({helped - python_s:+.3f} s over the bare interpreter, "
                 f"{old / helped:.1f}x faster than declaring every sub-command); goal: under 1 s on 2 cores")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
