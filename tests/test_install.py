"""The install is reproducible: pyproject.toml and requirements.lock agree, and the import
check names the packages that disagree instead of leaving a wall of collection errors. The
server installs as `mtspeech.serve`: nothing named `serve` lands in site-packages."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def _check_install():
    spec = importlib.util.spec_from_file_location("check_install", ROOT / "scripts" / "check_install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_entries() -> list[tuple[str, str, str]]:
    """(canonical name, version, the entry's comment text) for every lock entry."""
    entries, current = [], None
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            current = [_canon(m.group(1)), m.group(2), ""]
            entries.append(current)
        elif current is not None and line.strip().startswith("#"):
            current[2] += line + "\n"
    return [tuple(e) for e in entries]


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = project["dependencies"] + extras["test"] + extras["docs"]  # the extras scripts/lock.sh locks
    return [Requirement(r) for r in reqs]


def test_every_pyproject_dependency_is_locked_at_an_allowed_version():
    locked: dict[str, list[str]] = {}
    for name, version, _ in _lock_entries():
        locked.setdefault(name, []).append(version)
    for req in _pyproject_requirements():
        name = _canon(req.name)
        assert name in locked, f"{req.name} is in pyproject.toml but not in requirements.lock: run bash scripts/lock.sh"
        for version in locked[name]:
            assert req.specifier.contains(version, prereleases=True), (
                f"requirements.lock pins {req.name}=={version}, outside pyproject.toml's {req}: run bash scripts/lock.sh"
            )


def test_every_direct_lock_entry_is_still_in_pyproject():
    declared = {_canon(r.name) for r in _pyproject_requirements()}
    direct = {name for name, _, via in _lock_entries() if "mtspeech (pyproject.toml)" in via}
    assert direct, "requirements.lock has no entry marked 'via mtspeech (pyproject.toml)'"
    stale = direct - declared
    assert not stale, f"requirements.lock still has {sorted(stale)}, no longer in pyproject.toml: run bash scripts/lock.sh"


def test_lock_has_hashes_and_the_pair_that_loads_together():
    text = LOCK.read_text()
    entries = _lock_entries()
    assert text.count("--hash=sha256:") >= len(entries)
    versions = {name: v for name, v, _ in entries}
    assert versions["torch"] == "2.11.0" and versions["torchaudio"] == "2.11.0"


def test_import_check_passes_on_this_install(capsys):
    assert _check_install().main([]) == 0
    assert "install check: ok" in capsys.readouterr().out


def test_import_check_names_the_mismatched_pair(tmp_path, capsys):
    """A faked lock that pins torchaudio 2.11.1 while 2.11.0 is installed, and a torchaudio
    probe that fails as the real mismatch does: one message naming both versions."""
    check = _check_install()
    lock = tmp_path / "requirements.lock"
    lock.write_text(re.sub(r"(?m)^torchaudio==2\.11\.0", "torchaudio==2.11.1", LOCK.read_text()))

    def broken_torchaudio():
        raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")

    probes = dict(check.PROBES, torchaudio=broken_torchaudio)
    assert check.main(["--lock", str(lock)], probes=probes) == 1
    err = capsys.readouterr().err
    assert err.startswith("mtspeech install check FAILED")
    assert "undefined symbol" in err
    assert "torchaudio: installed 2.11.0, requirements.lock pins 2.11.1" in err
    assert "torch:" not in err  # torch itself matches the lock: not named as disagreeing
    assert "rm -rf .venv && bash scripts/setup.sh" in err


def test_import_check_blames_the_locked_set_when_versions_match(capsys):
    check = _check_install()
    installed = {"torch": "2.11.0", "torchaudio": "2.11.1"}
    msg = check.diagnose({"torchaudio": "OSError: undefined symbol"}, installed, dict(installed))
    assert "torch 2.11.0, torchaudio 2.11.1" in msg and "scripts/lock.sh" in msg


@pytest.mark.parametrize("marker, expected", [("python_full_version < '3.0'", None), ("", "1.0")])
def test_locked_versions_honours_markers(marker, expected):
    line = f"demo-pkg==1.0 ; {marker} \\" if marker else "demo-pkg==1.0 \\"
    assert _check_install().locked_versions(line + "\n    --hash=sha256:00\n").get("demo-pkg") == expected


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_and_the_server_installs_as_mtspeech_serve():
    """pyproject.toml lists its packages (packages.find cannot see a sub-package mapped from
    another folder): a folder added under mtspeech/ but not listed would be missing from the
    wheel, while an editable install still finds it."""
    config = _setuptools_config()
    assert config["package-dir"] == {"mtspeech.serve": "serve"}
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mtspeech").rglob("__init__.py")}
    folders |= {".".join(["mtspeech", *p.parent.relative_to(ROOT).parts])
                for p in (ROOT / "serve").rglob("__init__.py")}
    assert sorted(config["packages"]) == sorted(folders), "pyproject.toml's [tool.setuptools] packages"
    assert config["package-data"]["mtspeech.serve"] == ["static/*"]


def test_installed_server_is_mtspeech_serve_and_nothing_is_named_serve(tmp_path):
    """What a user of this environment gets: `python -I` from an empty folder, so neither
    PYTHONPATH nor this checkout's root can supply a `serve`; only the install can."""
    code = ("import importlib.util, json, pathlib\n"
            "import mtspeech.serve.app\n"
            "folder = pathlib.Path(mtspeech.serve.__file__).parent\n"
            "top = importlib.util.find_spec('serve')\n"
            "print(json.dumps({'serve': top and top.origin, 'static': (folder / 'static' / 'index.html').is_file()}))")
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, (f"`import mtspeech.serve` fails for {sys.executable}: install this checkout "
                                 f"(pip install --no-deps -e ., or bash scripts/setup.sh)\n{out.stderr}")
    found = json.loads(out.stdout)
    assert found["serve"] is None, f"a top-level `serve` is still importable, from {found['serve']}"
    assert found["static"], "serve/static/ was not installed next to mtspeech.serve"


def test_wheel_has_mtspeech_serve_and_no_top_level_serve(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("mtspeech", "serve"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stderr[-3000:]}"
    (wheel,) = (tmp_path / "wheel").glob("mtspeech-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"mtspeech/serve/__init__.py", "mtspeech/serve/app.py", "mtspeech/serve/static/index.html"} <= set(names)
    assert {n.split("/")[0] for n in names if not n.startswith("mtspeech-")} == {"mtspeech"}
