"""N `mtspeech serve` replicas on consecutive ports of one machine, with nginx in front.

    python deploy/replicas.py --model final.pt --replicas 2 --port 8080 --run-dir run/ [-- SERVE FLAGS]

starts replica k on port `first_replica_port + k` (default: the ports after `--port`), renders
deploy/nginx/mtspeech.conf for them into the run folder and starts nginx there as an ordinary
unprivileged process (its own prefix, pid file, logs and temp folders under `--run-dir`: no
root, nothing of the system's nginx touched). It runs until SIGTERM or SIGINT, then stops
everything cleanly: each replica gets SIGTERM and drains (open streams get their finals), then
nginx quits gracefully. A replica that exits meanwhile is left out by nginx's passive health
checks (see the config); it is not restarted.

The run folder holds `replicas.json` (ports and pids, written once all are ready), each
replica's log, nginx's config and logs, and `metrics/replica-K/`: each replica's Prometheus
values (`PROMETHEUS_MULTIPROC_DIR`), which stay readable after it exits (`final_metrics`).
Flags after `--` go to every `mtspeech serve` (e.g. `--workers 2`, `--decoder greedy`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("replicas")

SITE_CONF = Path(__file__).parent / "nginx" / "mtspeech.conf"
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # = ServerSettings.max_upload_bytes (checked by a test)
READY_TIMEOUT_S = 120.0  # loading a model (and tracing its step) takes seconds per replica
STOP_GRACE_S = 30.0  # beyond a replica's own --shutdown-timeout, before it is killed

MAIN_CONF = """\
# Rendered by deploy/replicas.py: nginx as an unprivileged process, everything under {run}.
daemon off;
{user}worker_processes auto;
pid {run}/nginx.pid;
error_log {run}/nginx-error.log warn;
# Each stream holds two connections (client and replica).
events {{ worker_connections 4096; }}
# A graceful stop waits this long for open streams (their replicas drain first).
worker_shutdown_timeout 30s;
http {{
    access_log {run}/nginx-access.log;
    client_body_temp_path {run}/tmp/client_body;
    proxy_temp_path {run}/tmp/proxy;
    fastcgi_temp_path {run}/tmp/fastcgi;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
    include {run}/mtspeech.conf;
}}
"""


def replica_share(serve_args: list[str], replicas: int, cores: int | None = None) -> list[str]:
    """The serve flags that give one of N replicas on this machine its share of the cores, as
    `serve --workers auto` shares them among its workers: cores / N worker processes, each
    decoding on its event loop's thread with one intra-op thread per core it has. Without them a
    replica left with one process would take `serve`'s one-process defaults (two decoding threads
    of cores / 2 intra-op threads each: every replica would run threads for all the cores, and
    its steps would wait on the GIL; see serve/workers.py). Flags already in `serve_args` win."""
    cores = cores or os.cpu_count() or 1
    given = {a.split("=")[0] for a in serve_args}
    workers = max(1, cores // replicas)
    flags = {"--workers": workers, "--decode-threads": 0, "--intra-op-threads": max(1, cores // (replicas * workers))}
    if "--workers" in given:  # the caller sized the replica: serve's own defaults for that size
        return []
    return [x for flag, value in flags.items() if flag not in given for x in (flag, str(value))]


def render_site(listen_port: int, replica_ports: list[int], max_upload_bytes: int, host: str = "127.0.0.1",
                template: str | None = None) -> str:
    """deploy/nginx/mtspeech.conf with its `replicas:` lines set: one upstream `server` per
    replica port, the listen port and the body limit (= the replicas' --max-upload-bytes)."""
    if not replica_ports:
        raise ValueError("replica_ports is empty: nginx needs at least one replica")
    text = template if template is not None else SITE_CONF.read_text()
    begin, end = "# replicas: begin\n", "    # replicas: end\n"
    if begin not in text or end not in text:
        raise ValueError(f"{SITE_CONF}: the '# replicas: begin' / '# replicas: end' markers are missing")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    servers = "".join(f"    server {host}:{p} max_fails=2 fail_timeout=10s;\n" for p in replica_ports)
    text = head + begin + servers + end + tail
    text = re.sub(r"listen \S+;(?=  # replicas: listen)", f"listen 127.0.0.1:{listen_port};", text)
    text = re.sub(r"client_max_body_size \d+;", f"client_max_body_size {max_upload_bytes};", text)
    return re.sub(r"the \d+-byte limit", f"the {max_upload_bytes}-byte limit", text)


def render_main(run_dir: Path) -> str:
    """The top-level nginx.conf of an unprivileged nginx whose files all live in `run_dir`."""
    user = ""
    if os.geteuid() == 0:  # as root, nginx's workers would become `nobody`, who cannot write run_dir
        import grp
        import pwd

        st = run_dir.stat()
        user = f"user {pwd.getpwuid(st.st_uid).pw_name} {grp.getgrgid(st.st_gid).gr_name};\n"
    return MAIN_CONF.format(run=run_dir, user=user)


@dataclass
class Replica:
    index: int
    port: int
    proc: subprocess.Popen
    metrics_dir: Path


class Replicas:
    """Start N replicas and nginx (`start`), stop them all (`stop`); see the module doc."""

    def __init__(self, model: str | Path, replicas: int, port: int, run_dir: str | Path,
                 first_replica_port: int | None = None, serve_args: list[str] = (),
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, nginx: str | None = None) -> None:
        if replicas < 1:
            raise ValueError(f"replicas={replicas}: expected >= 1")
        if any(a.split("=")[0] in ("--port", "--host", "--max-upload-bytes", "--model") for a in serve_args):
            raise ValueError(f"serve flags {list(serve_args)}: --model, --host, --port and --max-upload-bytes "
                             "are set by this script (use its own flags)")
        self.nginx = nginx or shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if self.nginx is None:
            raise FileNotFoundError("nginx is not installed: apt-get install -y nginx "
                                    "(scripts/setup.sh does, with MTSPEECH_NGINX=1)")
        self.model, self.port, self.serve_args = str(model), port, list(serve_args)
        self.run_dir = Path(run_dir).resolve()
        first = first_replica_port if first_replica_port is not None else port + 1
        self.ports = [first + k for k in range(replicas)]
        if port in self.ports:
            raise ValueError(f"--port {port} is one of the replicas' ports {self.ports}")
        self.max_upload_bytes = max_upload_bytes
        self.replicas: list[Replica] = []
        self.nginx_proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the replicas and nginx; return once every replica's /healthz and nginx answer."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.run_dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        try:
            for k, port in enumerate(self.ports):
                self.replicas.append(self._start_replica(k, port))
            # Replicas first: a connection nginx finds refused while one loads counts against it
            # (max_fails), and nginx would then skip a healthy replica for fail_timeout.
            self._wait_ready({f"http://127.0.0.1:{r.port}/healthz": r for r in self.replicas})
            self._start_nginx()
            self._wait_ready({f"{self.url}/healthz": None})
        except BaseException:
            self.stop()
            raise
        (self.run_dir / "replicas.json").write_text(json.dumps({
            "url": self.url, "nginx_pid": self.nginx_proc.pid,
            "replicas": [{"port": r.port, "pid": r.proc.pid, "metrics_dir": str(r.metrics_dir)}
                         for r in self.replicas]}, indent=1))

    def _start_replica(self, k: int, port: int) -> Replica:
        metrics_dir = self.run_dir / "metrics" / f"replica-{k}"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # values of an earlier run would be added up
        metrics_dir.mkdir(parents=True)
        cmd = [sys.executable, "-m", "mtspeech.cli", "serve", "--model", self.model, "--host", "127.0.0.1",
               "--port", str(port), "--max-upload-bytes", str(self.max_upload_bytes),
               *replica_share(self.serve_args, len(self.ports)), *self.serve_args]
        logfile = open(self.run_dir / f"replica-{k}.log", "ab")
        # its own session: a terminal's Ctrl-C reaches this script only, which stops replicas in order
        proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
                                env=os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
        logfile.close()
        log.info("replica %d: port %d, pid %d", k, port, proc.pid)
        return Replica(k, port, proc, metrics_dir)

    def _start_nginx(self) -> None:
        (self.run_dir / "mtspeech.conf").write_text(render_site(self.port, self.ports, self.max_upload_bytes))
        conf = self.run_dir / "nginx.conf"
        conf.write_text(render_main(self.run_dir))
        base = [self.nginx, "-p", f"{self.run_dir}/", "-c", str(conf), "-e", str(self.run_dir / "nginx-error.log")]
        check = subprocess.run([*base, "-t", "-q"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused {conf}:\n{check.stderr.strip()}")
        self.nginx_proc = subprocess.Popen(base, start_new_session=True, stdout=subprocess.DEVNULL,
                                           stderr=open(self.run_dir / "nginx-stderr.log", "ab"))
        log.info("nginx: %s, pid %d (config %s)", self.url, self.nginx_proc.pid, conf)

    def _wait_ready(self, waiting: dict[str, Replica | None]) -> None:
        """Until each URL answers 200 (None: nginx's), or its process exits, or READY_TIMEOUT_S."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while waiting:
            for url, replica in list(waiting.items()):
                proc = replica.proc if replica is not None else self.nginx_proc
                if proc.poll() is not None:
                    where = self.run_dir / (f"replica-{replica.index}.log" if replica else "nginx-error.log")
                    raise RuntimeError(f"{url}: exited with status {proc.returncode} before it was ready; see {where}")
                if _status(url) == 200:
                    del waiting[url]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {READY_TIMEOUT_S:.0f} s: {sorted(waiting)}")
            time.sleep(0.2)

    def stop(self) -> list[int | None]:
        """Drain and stop every replica (SIGTERM, killed after a grace), then nginx (graceful
        quit). Returns the replicas' exit statuses (0: drained)."""
        for r in self.replicas:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        statuses = [_wait_or_kill(r.proc, STOP_GRACE_S, f"replica {r.index}") for r in self.replicas]
        if self.nginx_proc is not None and self.nginx_proc.poll() is None:
            self.nginx_proc.send_signal(signal.SIGQUIT)  # graceful: the streams' replicas are gone already
            _wait_or_kill(self.nginx_proc, 35.0, "nginx")
        return statuses

    def __enter__(self) -> Replicas:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def _wait_or_kill(proc: subprocess.Popen, timeout_s: float, what: str) -> int | None:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) still running after %.0f s: killing it", what, proc.pid, timeout_s)
        proc.kill()
        return proc.wait()


def final_metrics(metrics_dir: str | Path) -> str:
    """The Prometheus text of a replica's values kept in `metrics_dir`, also once it has exited
    (what its /metrics said last)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    return generate_latest(registry).decode()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    serve_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint every replica serves")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--port", type=int, default=8080, help="nginx listens here (127.0.0.1)")
    p.add_argument("--first-replica-port", type=int, default=None, help="default: --port + 1")
    p.add_argument("--run-dir", default="run/replicas", help="pid file, logs, configs, temp files, metrics")
    p.add_argument("--max-upload-bytes", type=int, default=DEFAULT_MAX_UPLOAD_BYTES,
                   help="passed to every replica and set as nginx's client_max_body_size")
    args = p.parse_args(own)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        group = Replicas(args.model, args.replicas, args.port, args.run_dir, args.first_replica_port,
                         serve_args, args.max_upload_bytes)
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    try:
        group.start()
    except (RuntimeError, TimeoutError) as e:
        log.error("%s", e)
        return 1
    log.info("ready: %s (%d replicas); SIGTERM or Ctrl-C stops them all", group.url, len(group.replicas))
    reported = set()
    while not stopping:
        time.sleep(0.2)
        for r in group.replicas:
            if r.index not in reported and r.proc.poll() is not None:
                reported.add(r.index)
                log.warning("replica %d (port %d) exited with status %s; nginx routes around it",
                            r.index, r.port, r.proc.returncode)
    statuses = group.stop()
    log.info("stopped; replica exit statuses %s", statuses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
