"""What a load benchmark reads about server processes: their tree, CPU and memory from /proc,
an HTTP GET of their routes, and a Prometheus `/metrics` page as a dict."""

from __future__ import annotations

import contextlib
import os
import urllib.request
from pathlib import Path


def http_get(url: str, timeout: float = 10.0) -> bytes:
    """The body of a GET of `url` (a server's /healthz or /metrics)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def process_tree(roots: list[int]) -> list[int]:
    """`roots` and all their descendants (children of every thread), roots first."""
    pids, todo = [], list(roots)
    while todo:
        pid = todo.pop(0)
        if pid in pids:
            continue
        pids.append(pid)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(p) for p in (task / "children").read_text().split()]
    return pids


def cpu_seconds_of(pids: list[int]) -> float | None:
    """User + system CPU seconds of these processes so far (None: none could be read)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # fields from 3 (state) on; utime = 14, stime = 15
        total += (int(fields[11]) + int(fields[12])) / tick
    return total if total else None


def rss_bytes_of(pids: list[int]) -> int | None:
    """Resident set size of these processes now."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total or None


def parse_metrics(text: str) -> dict:
    """A /metrics page as {(name, ((label, value), ...)): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}
