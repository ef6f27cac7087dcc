"""MkDocs hook: the CLI reference page (docs/cli.md) gets every command's `--help`, generated
from the argparse parsers at build time, so the page cannot drift from the code.

mkdocs.yml names this file under `hooks:`; a page asks for the reference with the marker
`<!-- cli-reference -->`.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-commands in a private action, no public API
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _sections(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """`name`'s help, then each nested sub-command's (`prepare librispeech`, ...)."""
    out = [f"## `mtspeech {name}`\n\n```text\n{parser.format_help().rstrip()}\n```\n"]
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


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
