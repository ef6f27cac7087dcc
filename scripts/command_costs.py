"""Time and disk of the README's two commands: measured from a clone into committed JSON, and
rendered from that JSON into the README's "Two commands" section.

    python scripts/command_costs.py measure tests -- bash scripts/test.sh
    python scripts/command_costs.py measure main -- bash recipes/synthetic/run.sh
    python scripts/command_costs.py render      # the README block from docs/results/commands/
    python scripts/command_costs.py check       # exit 1 if the README differs

`measure` runs the command in this checkout (a fresh clone, to count the set-up: a clone
without `.venv` is recorded as fresh), times it on the wall clock, and records the disk the
checkout grew by, with the largest parts (.venv, data, exp). A command that fails writes nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "commands"
README = ROOT / "README.md"
BEGIN, END = "<!-- command-costs:begin -->", "<!-- command-costs:end -->"
COMMANDS = {"main": "bash recipes/synthetic/run.sh", "tests": "bash scripts/test.sh"}
PARTS = (".venv", "data", "exp")
RUN_LOG = Path("exp/synthetic/run-steps.jsonl")  # run.sh's own timing log (RUN_LOG in run.sh)


def steps_from_log(path: Path, since: float) -> dict[str, float] | None:
    """Seconds per step of the run.sh run that started at or after `since` (epoch seconds), from
    its timing log: each step lasts until the next one starts. None unless the run reached `done`."""
    if not path.is_file():
        return None
    marks = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    marks = [m for m in marks if m["at"] >= int(since)]
    if not marks or marks[-1]["step"] != "done":
        return None
    return {a["step"]: float(b["at"] - a["at"]) for a, b in zip(marks, marks[1:])}


def disk_bytes(path: Path) -> int:
    """Bytes on disk under `path` (du: blocks actually used, links counted once)."""
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(name: str, command: list[str]) -> dict | None:
    fresh = not (ROOT / ".venv").exists()
    before = disk_bytes(ROOT)
    started_at = time.time()
    start = time.monotonic()
    rc = subprocess.run(command, cwd=ROOT, stdin=subprocess.DEVNULL).returncode
    seconds = time.monotonic() - start
    if rc != 0:
        print(f"`{' '.join(command)}` failed (exit {rc}): nothing written", file=sys.stderr)
        return None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {
        "name": name, "command": " ".join(command), "seconds": round(seconds, 1), "fresh_clone": fresh,
        "disk_added_bytes": disk_bytes(ROOT) - before,
        "parts_bytes": {p: disk_bytes(ROOT / p) for p in PARTS},
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model()},
        "steps_seconds": steps_from_log(ROOT / RUN_LOG, started_at),
        "commit": commit, "date": datetime.date.today().isoformat(),
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def block() -> str:
    """The README's lines on the two commands' time and disk, from the committed JSON."""
    lines = []
    for name, command in COMMANDS.items():
        path = OUT / f"{name}.json"
        if not path.is_file():
            lines.append(f"- `{command}`: time and disk not measured yet "
                         f"(`python scripts/command_costs.py measure {name} -- {command}`).")
            continue
        r = json.loads(path.read_text())
        parts = ", ".join(f"{p} {_gb(b)}" for p, b in r["parts_bytes"].items() if b)
        steps = r.get("steps_seconds")
        if steps:  # run.sh's own log: minutes per step
            parts += "; per step (run.sh's log): " + ", ".join(f"{k} {v / 60:.0f} min" for k, v in steps.items())
        lines.append(f"- `{command}`: {r['seconds'] / 60:.0f} min on {r['machine']['cpus']} cores "
                     f"({'from a fresh clone, set-up included' if r['fresh_clone'] else 'set-up already done'}), "
                     f"{_gb(r['disk_added_bytes'])} of disk ({parts}); {r['date']}, commit {r['commit']}, "
                     f"[JSON](docs/results/commands/{name}.json).")
    return "\n".join(lines + ["", "Rendered by `python scripts/command_costs.py render`."])


def rendered_readme() -> str:
    text = README.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["measure", "render", "check"])
    ap.add_argument("name", nargs="?", choices=sorted(COMMANDS), help="measure: which command")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="measure: -- the command to run")
    args = ap.parse_args(argv)
    if args.action == "measure":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not args.name or not command:
            ap.error("measure needs a name and `-- COMMAND`")
        result = measure(args.name, command)
        if result is None:
            return 1
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {OUT / f'{args.name}.json'}")
        return 0
    want = rendered_readme()
    if args.action == "render":
        README.write_text(want, encoding="utf-8")
        print(f"wrote {README}")
        return 0
    if README.read_text(encoding="utf-8") != want:
        print(f"{README} differs from what {OUT} renders", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
