"""`mtspeech serve --workers 2`: two processes on one port; /healthz and /metrics count both;
a killed worker is replaced; SIGTERM drains both and exits 0 with no process left."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from mtspeech.client import to_pcm16
from serve_helpers import recv_all, tiny_checkpoint
from serve_helpers import signal as speech_like

pytestmark = pytest.mark.slow  # two model loads and a restart: ~30 s on two shared cores


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout_s: float = 60.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if predicate():
                return True
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(0.2)
    return False


def test_two_workers_share_the_port_count_together_restart_and_drain(tmp_path):
    ckpt = tiny_checkpoint(tmp_path, ["HELLO WORLD", "STREAMING SPEECH"],
                           {"asr": {"kind": "ctc", "vocab_size": 30, "dropout": 0.0}, "vad": {"kind": "vad"}})
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mtspeech.cli", "serve", "--model", str(ckpt), "--port", str(port),
                             "--workers", "2", "--max-streams", "10", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"127.0.0.1:{port}"
    health = lambda: httpx.get(f"http://{base}/healthz", timeout=2).json()  # noqa: E731
    try:
        assert _wait(lambda: health()["status"] == "ok"), "server did not come up"
        assert _wait(lambda: len(_children(proc.pid)) == 2)
        workers = _children(proc.pid)

        async def hold_streams(n: int):
            socks = [await connect(f"ws://{base}/v1/stream") for _ in range(n)]
            for ws in socks:
                await ws.send(json.dumps({"type": "start", "endpointing": False}))
                await ws.send(to_pcm16(speech_like(0.5)))
            await asyncio.sleep(0.5)
            seen = {health()["streams_open"] for _ in range(6)}  # whichever worker answers
            for ws in socks:
                await ws.send(json.dumps({"type": "stop"}))
                assert (await recv_all(ws))[-1]["type"] == "end"
                await ws.close()
            return seen

        assert asyncio.run(hold_streams(4)) == {4}  # every worker counts both workers' streams
        assert health()["max_streams"] == 10
        metrics = httpx.get(f"http://{base}/metrics", timeout=2).text
        audio = [float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith('mtspeech_audio_seconds_total{source="stream"}')]
        assert audio and audio[0] == pytest.approx(4 * 0.5, abs=0.05)  # both workers' audio, summed

        os.kill(workers[0], signal.SIGKILL)  # a worker dies: the supervisor starts another
        assert _wait(lambda: len(_children(proc.pid)) == 2 and workers[0] not in _children(proc.pid))
        assert _wait(lambda: health()["status"] == "ok")
        assert asyncio.run(hold_streams(2)) == {2}

        survivors = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read().decode(errors="replace")
    assert rc == 0, log
    assert "restarting it" in log
    assert not [p for p in survivors if Path(f"/proc/{p}").exists()], "a worker outlived the supervisor"


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path):
    """SIGKILL gives the supervisor no chance to stop its workers: they must stop on their own
    rather than keep the port (PR_SET_PDEATHSIG)."""
    ckpt = tiny_checkpoint(tmp_path, ["HELLO WORLD"], {"asr": {"kind": "ctc", "vocab_size": 30, "dropout": 0.0}})
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mtspeech.cli", "serve", "--model", str(ckpt), "--port", str(port),
                             "--workers", "2", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait(lambda: len(_children(proc.pid)) == 2)
        workers = _children(proc.pid)
        proc.kill()
        proc.wait(10)
        assert _wait(lambda: not [p for p in workers if Path(f"/proc/{p}").exists()], 30), "orphaned workers"
    finally:
        if proc.poll() is None:
            proc.kill()


def _sockets(pid: int) -> int:
    """Open socket file descriptors of a process."""
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return n


def test_a_burst_of_connections_spreads_over_the_workers(tmp_path):
    """60 WebSockets opened at once: each worker holds at least a quarter of them. With one
    shared listening socket the worker that woke first accepted the whole burst."""
    ckpt = tiny_checkpoint(tmp_path, ["HELLO WORLD"], {"asr": {"kind": "ctc", "vocab_size": 30, "dropout": 0.0}})
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mtspeech.cli", "serve", "--model", str(ckpt), "--port", str(port),
                             "--workers", "2", "--max-streams", "200", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"127.0.0.1:{port}"
    try:
        assert _wait(lambda: httpx.get(f"http://{base}/healthz", timeout=2).json()["status"] == "ok")
        assert _wait(lambda: len(_children(proc.pid)) == 2)
        workers = _children(proc.pid)
        time.sleep(1.0)  # both workers past start-up (each answers /healthz once it is up)
        before = {w: _sockets(w) for w in workers}

        async def burst(n: int) -> dict[int, int]:
            socks = await asyncio.gather(*[connect(f"ws://{base}/v1/stream") for _ in range(n)])
            await asyncio.sleep(0.5)
            held = {w: _sockets(w) - before[w] for w in workers}
            for ws in socks:
                await ws.close()
            return held

        held = asyncio.run(burst(60))
    finally:
        proc.terminate()
        proc.wait(60)
    assert sum(held.values()) == 60, held
    assert min(held.values()) >= 15, f"connections per worker: {held}"
