"""`mtspeech serve --adapted FILE`: API keys mapped to models adapted to customers' voices.

    {"keys": {"KEY-OF-ALICE": {"model": "adapted/alice.pt"},
              "KEY-OF-BOB":   {"delta": "adapted/bob.delta.pt"}}}

(JSON, or the same in YAML for a `.yaml` / `.yml` file.) A `model` is a checkpoint `mtspeech
adapt` wrote; a `delta` is its `NAME.delta.pt`, applied to the base model's weights
(`param_sets.apply_delta`). Relative paths are read from the file's folder. A request carrying one
of these keys is decoded by its model (serve/routing.py), everyone else by the base model.

Everything is checked before the server takes a request, and a file that fails is refused whole,
naming the entry by its position (never by its key: keys do not go to logs):
  - the file: readable JSON / YAML of exactly this shape, no key twice, keys that are non-empty
    strings without surrounding spaces (a header's key is read stripped, so one with spaces could
    never match), none equal to `--api-key`, every file named there present (`read_key_map`;
    `mtspeech serve` runs it before it loads any model);
  - a `model`: a checkpoint of the base's architecture (its encoder, tasks and features config) and
    the base's labels (a different tokenizer would spell every transcript wrong, silently), with
    the base's tensor names and shapes;
  - a `delta`: tensors the base has, of its shapes (`load_adapted`).

Each distinct file becomes one model, held in memory beside the base (its own copy of the weights
and its own encoder step); keys naming the same file share it. Its id, `adapted-` and the first 12
hex digits of the file's SHA-256, names it in `/metrics` and the log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import yaml

from mtspeech.adaptation.param_sets import AdaptationError, apply_delta
from mtspeech.checkpoint import CheckpointError, load_state
from mtspeech.decoding.config import DecodingError
from mtspeech.decoding.loader import recognizer_with_weights
from mtspeech.export.onnx import file_sha256
from mtspeech.serve.routing import ServedModel
from mtspeech.streaming import StreamingRecognizer

log = logging.getLogger(__name__)

KINDS = ("model", "delta")
# What defines a model's architecture and its reading of the audio in a checkpoint's config; the
# rest (data, optimiser, training) may differ between a base and its adapted copy.
ARCHITECTURE = ("encoder", "tasks", "features", "main_task")


class AdaptedError(ValueError):
    """The --adapted file, or a model it names, cannot be served; the message says which entry."""


@dataclass(frozen=True)
class AdaptedEntry:
    """One key's model: `kind` "model" (an adapted checkpoint) or "delta" (applied to the base),
    its file (resolved), and `where`, how messages name the entry (its position, not its key)."""

    kind: str
    path: Path
    where: str


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping key written twice (safe_load keeps the last)."""

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep)
        if len(mapping) < len(node.value):
            raise AdaptedError(f"a key is written twice in the mapping of line {node.start_mark.line + 1}; each "
                               "key may name one model")
        return mapping


def _unique_pairs(pairs: list) -> dict:
    """json's object hook refusing a key written twice (json.loads keeps the last)."""
    out = dict(pairs)
    if len(out) < len(pairs):
        raise AdaptedError("a key is written twice in one object; each key may name one model")
    return out


def _parse(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as e:  # its text quotes the file's lines, keys included: only where and what
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            raise AdaptedError(f"not valid YAML ({where}{getattr(e, 'problem', None) or 'unreadable'})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except ValueError as e:
        if isinstance(e, AdaptedError):
            raise
        raise AdaptedError(f"not valid JSON ({e}); a .yaml / .yml file is read as YAML") from None


def read_key_map(path: str | Path, api_key: str | None = None) -> dict[str, AdaptedEntry]:
    """API key → its entry, from the --adapted file at `path`, checked as the module doc says
    (not the models themselves: `load_adapted`). Raises AdaptedError naming the file."""
    path = Path(path)
    try:
        if not path.is_file():
            raise AdaptedError("no such file")
        data = _parse(path)
        if not isinstance(data, dict) or set(data) != {"keys"} or not isinstance(data["keys"], dict):
            raise AdaptedError('expected one object {"keys": {"KEY": {"model": PATH} or {"delta": PATH}, ...}}')
        if not data["keys"]:
            raise AdaptedError('"keys" is empty: list at least one key, or leave --adapted out')
        entries = {}
        for i, (key, spec) in enumerate(data["keys"].items(), start=1):
            entries[_checked_key(key, i, api_key)] = _entry(spec, i, path.parent)
        return entries
    except (OSError, UnicodeDecodeError) as e:
        raise AdaptedError(f"--adapted {path}: cannot read it ({e})") from None
    except AdaptedError as e:
        raise AdaptedError(f"--adapted {path}: {e}") from None


def _checked_key(key: object, i: int, api_key: str | None) -> str:
    if not isinstance(key, str):
        raise AdaptedError(f"entry {i}: its key is a {type(key).__name__}, not a string (quote it in YAML)")
    if not key or key != key.strip():
        raise AdaptedError(f"entry {i}: its key is empty or starts or ends with a space (a key in a header is "
                           "read stripped, so it could never match)")
    if api_key is not None and key == api_key:
        raise AdaptedError(f"entry {i}: its key is the server's --api-key, which gives the base model; give the "
                           "adapted voice a key of its own")
    return key


def _entry(spec: object, i: int, folder: Path) -> AdaptedEntry:
    where = f"entry {i}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        # nothing of the entry is quoted: in a file nested wrongly its field names may be keys
        raise AdaptedError(f'{where}: expected {{"model": PATH}} or {{"delta": PATH}} (exactly one of them)')
    kind, value = next(iter(spec.items()))
    if not isinstance(value, str) or not value:
        raise AdaptedError(f"{where}: {kind} must be a path (a string)")
    file = Path(value) if Path(value).is_absolute() else folder / value
    if not file.is_file():
        raise AdaptedError(f"{where}: {kind} {file}: no such file")
    return AdaptedEntry(kind, file, f"{where} ({kind} {file})")


# ----------------------------------------------------------------------------- the models


def load_adapted(path: str | Path, base_checkpoint: str | Path, base: StreamingRecognizer, *,
                 backend: str = "torch", int8: bool = False, api_key: str | None = None) -> dict[str, ServedModel]:
    """API key → its adapted model, for `Server`: every entry of the --adapted file checked
    against the base (`base_checkpoint`, served by `base`) and built on `backend` as the base is.
    Raises AdaptedError naming the file and the entry."""
    entries = read_key_map(path, api_key)
    try:
        base_state = load_state(base_checkpoint)
    except CheckpointError as e:
        raise AdaptedError(f"--adapted {path}: the base model: {e}") from None
    by_file: dict[str, ServedModel] = {}  # SHA-256 → model: keys naming the same file share it
    out = {}
    for key, entry in entries.items():
        digest = file_sha256(entry.path)
        if digest not in by_file:
            try:
                weights = _weights(entry, base_state)
                recognizer = recognizer_with_weights(base, weights, backend, source=entry.path, int8=int8)
            except (AdaptedError, AdaptationError, CheckpointError, DecodingError, ValueError) as e:
                raise AdaptedError(f"--adapted {path}: {entry.where}: {e}") from None
            by_file[digest] = ServedModel(f"adapted-{digest[:12]}", recognizer)
            log.info("adapted model %s: %s %s", by_file[digest].id, entry.kind, entry.path)
        out[key] = by_file[digest]
    return out


def _weights(entry: AdaptedEntry, base: dict) -> Mapping[str, torch.Tensor]:
    """The state dict of `entry`'s model, checked against the base checkpoint's dict `base`."""
    if entry.kind == "delta":
        try:  # a delta holds tensors and plain values only: no pickled code runs
            delta = torch.load(entry.path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for truncated or foreign files
            raise AdaptedError(f"cannot read it as a delta file of `mtspeech adapt` ({str(e)[:200]})") from None
        return apply_delta(base["model"], delta)
    state = load_state(entry.path)
    for section in ARCHITECTURE:
        if state["config"].get(section) != base["config"].get(section):
            raise AdaptedError(f"its {section} config differs from the base model's (--model): an adapted model "
                               "has the architecture of the model it was adapted from")
    if state.get("labels") != base.get("labels"):
        raise AdaptedError("its labels (tokenizer, phones, speakers) differ from the base model's: its transcripts "
                           "would be spelled with another vocabulary")
    theirs, ours = state["model"], base["model"]
    wrong = sorted(k for k in theirs.keys() | ours.keys()
                   if k not in theirs or k not in ours or theirs[k].shape != ours[k].shape)
    if wrong:
        raise AdaptedError(f"its tensors differ from the base model's in name or shape: {wrong[:5]}")
    return theirs
