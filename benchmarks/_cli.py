"""The command line the benchmarks share: the model to measure, and `main()`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """--model CKPT or --random-model (a tiny random checkpoint, `_tiny_model.py`), one required."""
    model = ap.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="checkpoint (from `mtspeech train`)")
    model.add_argument("--random-model", action="store_true",
                       help="a tiny randomly initialised checkpoint (nonsense text; for smoke runs)")


def run_main(doc: str, add_arguments: Callable, run: Callable, render: Callable,
             argv: list[str] | None = None, indent: int | None = 1,
             usage_errors: tuple[type[Exception], ...] = ()) -> dict:
    """Parse `argv`, run, print the rendered result, write it as JSON to `--out` if given
    (`indent` None: on one line, for results with many per-item records). An exception of
    `usage_errors` from `run` is reported as a usage error (argparse's message, exit 2)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        result = run(args)
    except usage_errors as e:
        ap.error(str(e))
    return emit(result, render, args.out, indent)


def emit(result: dict, render: Callable, out: str | None, indent: int | None = 1) -> dict:
    """Print the rendered result and write it as JSON to `out` if given."""
    print(render(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=indent))
        print(f"wrote {out}")
    return result
