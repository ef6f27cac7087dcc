"""Import a script of benchmarks/ as a module, for the tests of its pure functions."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py as the module `bench_NAME` (benchmarks/ on sys.path for its `_cli`)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
