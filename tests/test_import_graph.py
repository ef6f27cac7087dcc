"""Every import points down: no cycle between modules, none between folders.

The graph is read from the source with `ast` (no import runs), counting every `import` and
`from ... import` statement, inside functions too: a lazy import is still an arrow. Nodes are
the modules under `mtspeech/` and the server folder `serve/` (installed as `serve` or, once
renamed, `mtspeech.serve`: both names are mapped onto the folder by its path). A folder is a
package directory (`mtspeech/streaming`, `serve`, ...); a module at the top of `mtspeech/` is a
folder of its own, so `mtspeech/checkpoint.py` may be imported from anywhere as long as it
imports nothing that imports it back.

A package's `__init__` may gather its own modules (the built-in task kinds, a folder
re-exporting its public names), so its modules never import it back: they import the base
types from the module that defines them (`mtspeech.tasks.base`, `mtspeech.encoders.output`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The server's folder is found by its path: top-level serve/ (installed as `serve`, or as
# `mtspeech.serve` through a package-dir mapping: both names mean the folder), or mtspeech/serve/.
PACKAGES = {top: path for top, path in (("mtspeech", ROOT / "mtspeech"), ("serve", ROOT / "serve")) if path.is_dir()}
ALIASES = {"mtspeech.serve": "serve"} if "serve" in PACKAGES else {}


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every .py file of PACKAGES (packages by their __init__)."""
    out = {}
    for top, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _canonical(name: str) -> str:
    for alias, target in ALIASES.items():
        if name == alias or name.startswith(alias + "."):
            return target + name[len(alias):]
    return name


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a dotted import target) lies in, or None."""
    name = _canonical(name)
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports (anywhere in its file)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    package = mod.split(".") if is_package else mod.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join([*package, base] if base else package)
                # `from pkg import sub` imports pkg.sub when sub is a module
                targets = [f"{base}.{a.name}" for a in node.names] if base else []
            for target in targets:
                dep = _resolve(target, modules)
                if dep is None or dep == mod:
                    continue  # outside the package, or itself
                graph[mod].add(dep)
    return graph


def folder_of(module: str) -> str:
    """A module's folder: its package for modules in a sub-package (and the package for its
    __init__), the module itself at the top of mtspeech/ (and the `serve` folder as a whole)."""
    parts = module.split(".")
    if parts[0] == "serve":
        return "serve"
    path = PACKAGES["mtspeech"].joinpath(*parts[1:])
    if len(parts) == 1:
        return "mtspeech"
    if path.is_dir():  # a sub-package's __init__
        return module
    return ".".join(parts[:-1]) if len(parts) > 2 else module


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (iterative DFS, three colours)."""
    colour = {n: 0 for n in graph}
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                colour[node] = 2
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {folder_of(m): set() for m in graph}
    for mod, deps in graph.items():
        for dep in deps:
            a, b = folder_of(mod), folder_of(dep)
            # a package's __init__ may gather its own modules (a folder importing itself)
            if a != b:
                out[a].add(b)
    return out


def _witness(graph: dict[str, set[str]], a: str, b: str) -> str:
    """A module import that makes folder a import folder b."""
    for mod in sorted(graph):
        for dep in sorted(graph[mod]):
            if folder_of(mod) == a and folder_of(dep) == b:
                return f"{mod} -> {dep}"
    return "?"


def test_the_walker_sees_imports_inside_functions_and_names_cycles():
    if ALIASES:
        assert _canonical("mtspeech.serve.app") == "serve.app"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "mtspeech.train" in graph["mtspeech.cli"]  # imported inside `_run_train` only
    server = "serve" if "serve" in PACKAGES else "mtspeech.serve"
    assert f"{server}.server" in graph[f"{server}.ws"]
    assert folder_of("mtspeech.streaming.recognizer") == "mtspeech.streaming"
    assert folder_of("mtspeech.streaming") == "mtspeech.streaming"
    assert folder_of("mtspeech.checkpoint") == "mtspeech.checkpoint"
    assert folder_of(f"{server}.ws") == server


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle)


def test_no_import_cycle_between_folders():
    graph = import_graph()
    cycle = find_cycle(folder_graph(graph))
    assert cycle is None, "import cycle between folders: " + " -> ".join(cycle) + " (" + "; ".join(
        _witness(graph, a, b) for a, b in zip(cycle, cycle[1:])) + ")"
