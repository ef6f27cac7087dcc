"""Import check run at the end of scripts/setup.sh: load every native extension mtspeech uses.

A wheel that installs but whose C extension does not load (torchaudio 2.11.1 against torch
2.11.0: `undefined symbol: torch_exception_get_what_without_backtrace`) otherwise shows up as
a wall of test-collection errors. This script exercises each native part on a tiny input and,
on failure, prints one message naming what failed and which installed versions disagree with
requirements.lock. Standard library only (plus what it checks), so it runs on a broken venv.

    python scripts/check_install.py [--lock requirements.lock]     exit 0: all load; 1: message
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable

# Packages whose native code mtspeech loads, checked in this order.
NATIVE = ("torch", "torchaudio", "speechbrain", "flashlight-text", "sentencepiece", "soundfile", "pyworld")


def _probe_torch() -> None:
    import torch

    torch.ones(2, 3).sum().item()


def _probe_torchaudio() -> None:
    import torch
    import torchaudio.functional as F

    log_probs = torch.randn(1, 5, 3).log_softmax(-1)
    F.forced_align(log_probs, torch.tensor([[1, 2]], dtype=torch.int32), blank=0)


def _probe_speechbrain() -> None:
    import speechbrain.nnet.losses  # noqa: F401


def _probe_flashlight() -> None:
    from flashlight.lib.text.decoder import LexiconFreeDecoderOptions  # noqa: F401
    from torchaudio.models.decoder import ctc_decoder  # noqa: F401


def _probe_sentencepiece() -> None:
    import sentencepiece

    sentencepiece.SentencePieceProcessor()


def _probe_soundfile() -> None:
    import io

    import numpy as np
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(160, dtype="float32"), 16000, format="FLAC")
    buf.seek(0)
    soundfile.read(buf)


def _probe_pyworld() -> None:
    import warnings

    import numpy as np

    with warnings.catch_warnings():  # pyworld 0.3 imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import pyworld
    x = np.sin(np.arange(1600) * 2 * np.pi * 120 / 16000)
    pyworld.dio(x, 16000)


PROBES: dict[str, Callable[[], None]] = {
    "torch": _probe_torch,
    "torchaudio": _probe_torchaudio,
    "speechbrain": _probe_speechbrain,
    "flashlight-text": _probe_flashlight,
    "sentencepiece": _probe_sentencepiece,
    "soundfile": _probe_soundfile,
    "pyworld": _probe_pyworld,
}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _marker_holds(marker: str) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:  # no packaging: keep the line (the check only reports, it never installs)
        return True
    return Marker(marker).evaluate()


def locked_versions(lock_text: str) -> dict[str, str]:
    """Canonical name → version of the lock lines whose environment markers hold here."""
    pins = {}
    for line in lock_text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]+))?", line)
        if m and _marker_holds((m.group(3) or "").strip()):
            pins[_canon(m.group(1))] = m.group(2)
    return pins


def installed_versions(names) -> dict[str, str | None]:
    """Canonical name → installed version (None when not installed)."""
    out = {}
    for name in names:
        try:
            out[_canon(name)] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[_canon(name)] = None
    return out


def diagnose(failures: dict[str, str], installed: dict, locked: dict) -> str:
    """One message: what failed to load, and which installed versions differ from the lock."""
    lines = ["mtspeech install check FAILED: native code did not load."]
    for pkg, err in failures.items():
        lines.append(f"  {pkg} {installed.get(_canon(pkg)) or '(not installed)'}: {err}")
    differ = [
        f"  {name}: installed {installed.get(name) or 'none'}, requirements.lock pins {locked[name]}"
        for name in map(_canon, NATIVE)
        if name in locked and installed.get(name) != locked[name]
    ]
    pair = ", ".join(f"{n} {installed.get(n) or 'none'}" for n in ("torch", "torchaudio"))
    if differ:
        lines.append("These installed versions disagree with requirements.lock:")
        lines += differ
        lines.append("Fix: rm -rf .venv && bash scripts/setup.sh (installs exactly the lock).")
    else:
        lines.append(
            f"Installed versions match requirements.lock ({pair}), so the locked set itself does "
            "not load here. torchaudio's wheels load only with the exact torch they were built "
            "against: pin a pair that loads together in pyproject.toml, then run bash "
            "scripts/lock.sh and bash scripts/setup.sh."
        )
    return "\n".join(lines)


def _one_line(exc: BaseException) -> str:
    """`Type: message`, with the root cause (e.g. the undefined symbol) appended."""
    def text(e):
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0] if lines else ''}"
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    return (text(exc) + (f" <- {text(root)}" if root is not exc else ""))[:400]


def run_probes(probes: dict[str, Callable[[], None]] = PROBES) -> dict[str, str]:
    """Package → one-line error, for each probe that raised."""
    failures = {}
    for pkg, probe in probes.items():
        try:
            probe()
        except Exception as exc:  # any failure to load is what we report
            failures[pkg] = _one_line(exc)
    return failures


def main(argv=None, probes: dict[str, Callable[[], None]] = PROBES) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lock", type=Path, default=Path(__file__).resolve().parent.parent / "requirements.lock")
    args = ap.parse_args(argv)
    failures = run_probes(probes)
    if not failures:
        print(f"install check: ok ({', '.join(NATIVE)} load)")
        return 0
    locked = locked_versions(args.lock.read_text()) if args.lock.exists() else {}
    print(diagnose(failures, installed_versions(NATIVE), locked), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
