"""The frame geometry is typed once: `mtspeech/data/geometry.py`. Nothing else retypes it.

Sample rate, hop, window, subsampling, chunk window and frame shift follow from the config
(STYLE.md, convention 10); a module that types `16000`, `HOP = 160`, `4 * c + 3` or
`* 0.04` again silently disagrees the day the geometry changes. The scan reads the source of
the package, the server and the benchmarks with `ast` (so comments and docstrings may say
"16 kHz" or "160 samples" freely) and flags:

- the number 16000 anywhere (it has no other meaning here than the sample rate);
- 160, 400 or 640 (hop, window, encoder frame in samples) as an assigned value, a default or
  an operand of arithmetic (an HTTP status 400 passed to a call is fine);
- 0.01 or 0.04 (hop, encoder frame in seconds) as an operand of arithmetic, or as the default
  of a `frame_shift` parameter;
- the chunk window `4 * c + 3`.

The energy detector of `mtspeech/data/segments.py` frames audio on its own grid (its
`frame_s` / `hop_s` parameters, in seconds at any rate, documented in docs/data.md), not the
model's; `ALLOWED` names the one file that keeps a frozen copy of it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("mtspeech", "serve", "benchmarks")
HOME = ROOT / "mtspeech" / "data" / "geometry.py"
ALLOWED = {"benchmarks/rehearsal_detector.py": "the energy detector as it was, on its own 10 ms grid"}

SAMPLE_RATES = {16000}
SAMPLE_COUNTS = {160, 400, 640}
SECONDS = {0.01, 0.04}


def _num(node: ast.AST) -> int | float | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    return None


def _defaults(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
    """(parameter name, default node) pairs of a function."""
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    yield from zip((a.arg for a in positional[len(positional) - len(args.defaults):]), args.defaults)
    yield from ((a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None)


def retyped_geometry(source: str, filename: str = "<source>") -> list[str]:
    """'line: what' for every retyped geometry constant in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        line = getattr(node, "lineno", 0)
        if _num(node) in SAMPLE_RATES:
            found.append(f"{line}: sample rate {node.value} typed again")
        assigned = []
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            assigned.append(node.value)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for name, default in _defaults(node):
                assigned.append(default)
                if _num(default) in SECONDS and "frame_shift" in name:
                    found.append(f"{line}: {name} defaults to {default.value} s")
        if isinstance(node, ast.BinOp):
            for operand in (node.left, node.right):
                if _num(operand) in SAMPLE_COUNTS:
                    found.append(f"{line}: {operand.value} samples in arithmetic")
                if _num(operand) in SECONDS:
                    found.append(f"{line}: {operand.value} s in arithmetic")
            if (isinstance(node.op, ast.Add) and _num(node.right) == 3 and isinstance(node.left, ast.BinOp)
                    and isinstance(node.left.op, ast.Mult) and 4 in (_num(node.left.left), _num(node.left.right))):
                found.append(f"{line}: chunk window 4c+3 typed again")
        found += [f"{line}: {_num(v)} samples assigned" for v in assigned if _num(v) in SAMPLE_COUNTS]
    return found


def test_the_scan_finds_every_kind_of_retyping():
    snippet = '''
SAMPLE_RATE = 16000
HOP_SAMPLES = 160
def f(x, frame_shift_s=0.04, win: int = 400):
    return 4 * x + 3, x * 0.01, x / 640
'''
    found = retyped_geometry(snippet)
    assert len(found) == 7, found
    assert retyped_geometry("raise APIError(400, 'bad')\nlr = 0.01\nn = f(x, 160)\n# 16000 Hz\n") == []


def test_no_module_retypes_the_frame_geometry():
    offenders = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if path == HOME or rel.as_posix() in ALLOWED:
                continue
            offenders += [f"{rel}:{hit}" for hit in retyped_geometry(path.read_text(encoding="utf-8"), str(rel))]
    assert not offenders, ("read these from mtspeech.data.geometry (SAMPLE_RATE, FrameGeometry: "
                           "model.geometry / recognizer.geometry) instead:\n  " + "\n  ".join(offenders))
