"""`server_load.py --replicas N`: the same load through nginx in front of N `mtspeech serve`
replicas on this machine (`deploy/replicas.py`), to show what the balancer costs.

The replicas get the flags a single server would get; unless `--workers` is given, each takes
cores / N worker processes (`deploy/replicas.py`'s rule), so N replicas use the same cores as one
server with `--workers auto`. What the benchmark reads from "the server" is read from the whole
group:

  cpu, rss     every process under the replicas and nginx (nginx's workers proxy every frame,
               so their CPU is part of the cost); nginx's own CPU is also reported per level
               (`balancer_cpu_s`);
  /metrics     each replica's, read on its own port and added up (counters and histogram buckets
               add; nginx would send a /metrics request to one replica only);
  idle         every replica's `/healthz` reports no open stream.

The streams connect to nginx's port, as a client of a deployment would.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import time
from pathlib import Path

from _server_procs import cpu_seconds_of, http_get, parse_metrics, process_tree, rss_bytes_of

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))

from replicas import Replicas  # noqa: E402


def _ports_free(first: int, count: int) -> bool:
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_run(count: int, tries: int = 50) -> int:
    """The first of `count` consecutive free loopback ports (replicas.py numbers them in a row)."""
    for _ in range(tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count < 65536 and _ports_free(first, count):
            return first
    raise RuntimeError(f"no {count} consecutive free loopback ports found in {tries} tries")


class ReplicaGroup:
    """N replicas behind nginx, with `ServerProcess`'s interface (see the module doc)."""

    def __init__(self, ckpt: str, serve_flags: list[str], replicas: int) -> None:
        if replicas < 1:
            raise SystemExit(f"--replicas {replicas}: expected >= 1")
        first = free_port_run(replicas + 1)
        self.port = first
        self.base = f"http://127.0.0.1:{self.port}"
        self._run_dir = tempfile.TemporaryDirectory(prefix="mtspeech_bench_replicas_")
        self.group = Replicas(ckpt, replicas, first, self._run_dir.name, first + 1, serve_flags)

    def __enter__(self) -> ReplicaGroup:
        t0 = time.monotonic()
        try:
            self.group.start()
        except BaseException:
            self._run_dir.cleanup()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.group.stop()
        finally:
            self._run_dir.cleanup()

    def log_tail(self, chars: int = 3000) -> str:
        logs = sorted(Path(self._run_dir.name).glob("replica-*.log"))
        return "\n".join(f"{p.name}: {p.read_text(errors='replace')[-chars:]}" for p in logs)

    def _roots(self) -> list[int]:
        procs = [r.proc for r in self.group.replicas] + [self.group.nginx_proc]
        return [p.pid for p in procs if p is not None]

    def _pids(self) -> list[int]:
        return process_tree(self._roots())

    def worker_pids(self) -> list[int]:
        """The processes that decode: each replica's workers (or the replica itself)."""
        pids = []
        for r in self.group.replicas:
            tree = process_tree([r.proc.pid])
            pids += tree[1:] or tree
        return pids

    def cpu_seconds(self) -> float | None:
        return cpu_seconds_of(self._pids())

    def balancer_cpu_seconds(self) -> float:
        """nginx's CPU seconds so far (its master and workers): part of `cpu_seconds`."""
        proc = self.group.nginx_proc
        return (cpu_seconds_of(process_tree([proc.pid])) or 0.0) if proc is not None else 0.0

    def rss_bytes(self) -> int | None:
        return rss_bytes_of(self._pids())

    def _replica_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{r.port}" for r in self.group.replicas]

    def metrics(self) -> dict:
        total: dict = {}
        for url in self._replica_urls():
            for key, value in parse_metrics(http_get(url + "/metrics").decode()).items():
                total[key] = total.get(key, 0.0) + value
        return total

    def wait_idle(self, timeout: float = 30.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if all(json.loads(http_get(url + "/healthz"))["streams_open"] == 0 for url in self._replica_urls()):
                return
            time.sleep(0.1)
