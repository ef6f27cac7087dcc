"""`mtspeech serve --workers N`: N server processes on one port, one listening socket each.

Why processes: under load one server process is bound by its GIL, not by the cores. The
flashlight beam search steps with the GIL held, and the event loop, the batcher and the
per-stream decoding are Python. A py-spy `--gil` profile of 96 continuous streams (phones + LM)
had the GIL held most of the time while the process used under one core. A second process
brings a second GIL, so the work of N streams spreads over the cores. uvicorn's own `--workers`
does the same, but it would import the app by name in each process; here each worker is the
ordinary `mtspeech serve` command with `--fd`, so it builds its recognizer from the same flags.

The supervisor (this module) binds the sockets, starts each worker with its own, and:
  - splits `--max-streams` between them (each refuses past its share: 1013 / 503);
  - gives each worker cores / N intra-op threads and runs its decoding steps on its event loop's
    thread (`--decode-threads 0`): in a process of its own, a step on a second thread waited for
    the busy loop at each of its ~100 GIL releases, and at 160 streams final latency p95 was
    0.77 s threaded against 0.46 s inline (benchmarks/server_load.py, same machine and run);
  - shares Prometheus metrics through `PROMETHEUS_MULTIPROC_DIR`, so `/metrics` and `/healthz`
    of any worker count every worker's streams;
  - on SIGTERM or SIGINT passes SIGTERM on (each worker drains its streams: finals first) and
    waits for them all;
  - restarts a worker that dies unexpectedly (at most `MAX_RESTARTS` in `RESTART_WINDOW_S`, then
    gives up and stops the others: a worker that cannot stay up is a configuration error).

Each worker has its own listening socket on the port (SO_REUSEPORT), and the kernel spreads new
connections over the sockets by a hash of their addresses, so every worker gets its share of a
burst. With one socket shared by all workers, the worker that woke first took every connection
waiting (asyncio accepts up to the backlog at once): a load test of 192 streams started together
put six times as many samples on one worker as on the other, which fell behind while the other
idled. The supervisor keeps every socket open, so connections queued for a worker that died wait
for its replacement instead of being refused. Connections stay with the worker that accepted them.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

log = logging.getLogger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
POLL_S = 0.2


def _die_with_supervisor() -> None:
    """In a worker, before exec: SIGTERM it when the supervisor dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), so no worker outlives it holding the port. Elsewhere, a no-op."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_argv(args: argparse.Namespace, parser: argparse.ArgumentParser, **override) -> list[str]:
    """The `serve` flags of `args` as a command line (only those that differ from the defaults),
    with `override` (dest → value) applied."""
    values = vars(args) | override
    argv: list[str] = []
    for action in parser._actions:  # noqa: SLF001 — argparse has no public list of its actions
        if not action.option_strings or action.dest not in values or action.dest == "help":
            continue
        value = values[action.dest]
        if value == action.default or value is None:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def bind(host: str, port: int, n: int = 1) -> list[socket.socket]:
    """`n` listening sockets on host:port, one per worker, sharing the port by SO_REUSEPORT (IPv6
    when `host` is an IPv6 address). Port 0: the first gets a free port and the others join it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class Supervisor:
    """Start, watch and stop the worker processes (see the module doc)."""

    def __init__(self, args: argparse.Namespace, parser: argparse.ArgumentParser):
        self.n = args.workers
        cores = os.cpu_count() or 1
        self.socks = bind(args.host, args.port, self.n)
        # A folder the caller named (PROMETHEUS_MULTIPROC_DIR, e.g. deploy/replicas.py's, read after
        # the server exits) is used as it is; otherwise a temporary one, removed at exit.
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.metrics_dir = None if given else tempfile.TemporaryDirectory(prefix="mtspeech-metrics-")
        self.metrics_path = given or self.metrics_dir.name
        self.cmds = [[sys.executable, "-m", "mtspeech.cli", "serve", *worker_argv(
            args, parser, workers=1, fd=sock.fileno(),
            max_streams=math.ceil(args.max_streams / self.n),
            decode_threads=0 if args.decode_threads is None else args.decode_threads,
            intra_op_threads=args.intra_op_threads or max(1, cores // self.n))] for sock in self.socks]
        self.env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": self.metrics_path,
                                 "MTSPEECH_SERVER_MAX_STREAMS": str(args.max_streams)}
        self.procs: list[subprocess.Popen | None] = [None] * self.n
        self.restarts: list[float] = []
        self.stopping = False

    def _start(self, i: int) -> None:
        # its own session: a terminal's Ctrl-C reaches the supervisor only, which passes on one SIGTERM
        self.procs[i] = subprocess.Popen(self.cmds[i], pass_fds=(self.socks[i].fileno(),), start_new_session=True,
                                         preexec_fn=_die_with_supervisor, env=self.env | {"MTSPEECH_WORKER": str(i)})
        log.info("worker %d started (pid %d)", i, self.procs[i].pid)

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for i in range(self.n):
                self._start(i)
            return self._watch()
        finally:
            self._stop_all()
            for sock in self.socks:
                sock.close()
            if self.metrics_dir is not None:
                self.metrics_dir.cleanup()

    def _watch(self) -> int:
        while not self.stopping:
            time.sleep(POLL_S)
            for i, p in enumerate(self.procs):
                if p is None or p.poll() is None or self.stopping:
                    continue
                self._mark_dead(p.pid)
                if p.returncode == 2:  # `mtspeech serve` refused its flags or its checkpoint: no retry helps
                    log.error("mtspeech serve: worker %d could not start (see its error above); stopping", i)
                    return 2
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
                if len(self.restarts) > MAX_RESTARTS:
                    log.error("mtspeech serve: workers exited %d times within %.0f s (the last with status %s); "
                              "stopping", len(self.restarts), RESTART_WINDOW_S, p.returncode)
                    return 1
                log.warning("worker %d (pid %d) exited with status %s; restarting it", i, p.pid, p.returncode)
                self._start(i)
        return 0

    def _stop_all(self) -> None:
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)  # each drains: open streams get their finals
        for p in live:
            try:
                p.wait()
            except KeyboardInterrupt:
                p.kill()
            self._mark_dead(p.pid)

    def _mark_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.metrics_path)


def supervise(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run `mtspeech serve` as `args.workers` worker processes until SIGTERM / SIGINT."""
    sup = Supervisor(args, parser)
    log.info("serving on %s:%d with %d worker processes", args.host, args.port, sup.n)
    return sup.run()
