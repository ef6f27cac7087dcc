"""MkDocs hook: reference pages generated from the code at build time, so they cannot drift.

- `<!-- cli-reference -->` (docs/cli.md): `mtspeech --help` and every sub-command's full
  help, from the argparse parsers;
- `<!-- config-reference -->` (docs/config.md): every config key with its type, default and
  the comment beside it, from the frozen dataclasses the YAML is read into.

mkdocs.yml names this file under `hooks:`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import textwrap

CLI_MARKER = "<!-- cli-reference -->"
CONFIG_MARKER = "<!-- config-reference -->"


# ----------------------------------------------------------------------------- the CLI


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-commands in a private action, no public API
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _sections(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """`name`'s help, then each nested sub-command's (`prepare librispeech`, ...)."""
    out = [f"### `mtspeech {name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n"]
    for sub_name, sub in _subparsers(parser).items():
        out += _sections(f"{name} {sub_name}", sub)
    return out


def cli_reference() -> str:
    """Markdown: `mtspeech --help`, then the full help of every sub-command."""
    from mtspeech.cli import _COMMANDS, build_parser

    os.environ.setdefault("COLUMNS", "100")  # argparse wraps to the terminal: one width for every build
    top = build_parser([])
    parts = [f"```text\n{top.format_help().rstrip()}\n```\n"]
    for name, _help, _add in _COMMANDS:
        parts += _sections(name, _subparsers(build_parser([name]))[name])
    return "\n".join(parts)


# ----------------------------------------------------------------------------- config keys


def _field_comments(cls: type) -> dict[str, str]:
    """field name → the `# comment` on its line, or on the lines just above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = lines[node.lineno - 1]
            note = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            above, i = [], node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                above.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            comments[node.target.id] = " ".join(above + [note]).strip()
    return comments


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(the section below)"
    else:
        return "**required**"
    return f"`{value!r}`"


def _table(prefix: str, cls: type, heading: str | None = None) -> str:
    """Markdown table of `cls`'s fields as keys `prefix.field` (`field` alone for no prefix)."""
    comments = _field_comments(cls)
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    title = heading or f"`{prefix}`"
    rows = [f"#### {title} (`{cls.__module__}.{cls.__qualname__}`)", "", doc, "",
            "| key | type | default | note |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        kind = str(f.type).replace("|", "\\|")
        note = comments.get(f.name, "").replace("|", "\\|")
        key = f"{prefix}.{f.name}" if prefix else f.name
        rows.append(f"| `{key}` | `{kind}` | {_default(f).replace('|', chr(92) + '|')} | {note} |")
    return "\n".join(rows) + "\n"


def config_reference() -> str:
    from mtspeech.data.augment import AugmentConfig
    from mtspeech.data.features import FeatureConfig, SpecAugmentConfig
    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.encoders import ENCODERS
    from mtspeech.encoders.towers import BranchingConfig, TowersConfig
    from mtspeech.experiment import DataConfig, Experiment, OptimConfig, TrainConfig
    from mtspeech.serve.limits import ServerSettings
    from mtspeech.tasks import TASKS
    from mtspeech.weighting import WeightingConfig

    parts = ["### The experiment file", "", _table("", Experiment, "top level")]
    for prefix, cls in (("data", DataConfig), ("data.augment", AugmentConfig), ("features", FeatureConfig),
                        ("specaugment", SpecAugmentConfig), ("optim", OptimConfig), ("train", TrainConfig),
                        ("weighting", WeightingConfig)):
        parts.append(_table(prefix, cls))
    parts += ["### `encoder`, by `kind`", ""]
    parts += [_table("encoder", enc.Config, f"`encoder` with `kind: {kind}`") for kind, enc in ENCODERS.items()]
    parts += [_table("encoder.towers", TowersConfig), _table("encoder.branching", BranchingConfig)]
    parts += ["### `tasks.NAME`, by `kind`", ""]
    parts += [_table("tasks.NAME", task.Config, f"`tasks.NAME` with `kind: {kind}`") for kind, task in TASKS.items()]
    parts += ["### Decoding and serving", "",
              "Not in the experiment file: `mtspeech evaluate`, `serve` and `transcribe` take these as flags.", "",
              _table("decoding", DecodingConfig), _table("server", ServerSettings)]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    return markdown
