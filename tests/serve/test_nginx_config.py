"""deploy/: the nginx config rendered for N replicas is what `nginx -t` accepts, and its
body limit is the server's."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtspeech.serve.limits import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def _replicas():
    spec = importlib.util.spec_from_file_location("deploy_replicas", ROOT / "deploy" / "replicas.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_render_lists_every_replica_and_the_servers_upload_limit():
    r = _replicas()
    assert r.DEFAULT_MAX_UPLOAD_BYTES == ServerSettings().max_upload_bytes
    text = r.render_site(9000, [9001, 9002, 9003], 1234)
    assert [line.split()[1] for line in text.splitlines() if line.strip().startswith("server 127.")] == [
        "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    assert "listen 127.0.0.1:9000;" in text and "client_max_body_size 1234;" in text
    assert "the 1234-byte limit" in text and "52428800" not in text
    # the file as shipped says the server's default limit
    assert f"client_max_body_size {ServerSettings().max_upload_bytes};" in r.SITE_CONF.read_text()
    with pytest.raises(ValueError, match="at least one replica"):
        r.render_site(9000, [], 1)
    with pytest.raises(ValueError, match="are set by this script"):
        r.Replicas("m.pt", 2, 9000, "run", serve_args=["--port", "1"], nginx="/bin/true")


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx)")
def test_nginx_accepts_the_rendered_config_as_an_unprivileged_process(tmp_path):
    r = _replicas()
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "tmp" / sub).mkdir(parents=True)
    (tmp_path / "mtspeech.conf").write_text(r.render_site(9000, [9001, 9002], 5000))
    (tmp_path / "nginx.conf").write_text(r.render_main(tmp_path))
    check = subprocess.run([NGINX, "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf"),
                            "-e", str(tmp_path / "error.log"), "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "syntax is ok" in check.stderr


def test_each_replica_gets_a_worker_share_of_the_cores():
    """N replicas on one machine split its cores as `serve --workers auto` splits them among
    workers: inline decoding, one intra-op thread per core. (One process per replica used to get
    serve's one-process defaults: two decoding threads, each replica running threads for every core.)"""
    share = _replicas().replica_share
    assert share([], 2, cores=2) == ["--workers", "1", "--decode-threads", "0", "--intra-op-threads", "1"]
    assert share([], 2, cores=8) == ["--workers", "4", "--decode-threads", "0", "--intra-op-threads", "1"]
    assert share([], 3, cores=2) == ["--workers", "1", "--decode-threads", "0", "--intra-op-threads", "1"]
    # the caller's flags win; a caller who sized the replica (--workers) gets serve's own defaults for it
    assert share(["--decode-threads", "1"], 2, cores=2) == ["--workers", "1", "--intra-op-threads", "1"]
    assert share(["--workers=2"], 2, cores=2) == []
