"""The `Utterance` record and its JSON Lines manifest (one utterance a line).

A manifest is the only thing the rest of the toolkit reads about a corpus: the audio path,
its duration and every label a task may ask for. A missing label is `None`, never a
sentinel, so tasks can mask it (see docs/interfaces.md, "Manifest", and docs/data.md).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A malformed manifest line; the message names the file and the 1-based line number."""


@dataclass(frozen=True)
class Utterance:
    """One utterance. `speech` holds `[start_s, end_s]` speech segments in seconds.

    Field types follow the JSON (lists, not tuples) so `read_manifest(write_manifest(u)) == u`.
    """

    id: str
    audio: str
    duration: float
    text: str | None = None
    speaker: str | None = None
    sex: str | None = None
    phones: list[str] | None = None
    speech: list[list[float]] | None = None

    def to_json(self) -> dict:
        """A JSON-able dict with the field names of docs/interfaces.md (lists, not tuples)."""
        # Built by hand, in field order: dataclasses.asdict deep-copies every list and was a
        # tenth of `prepare librispeech`'s time.
        return {
            "id": self.id, "audio": self.audio, "duration": self.duration, "text": self.text,
            "speaker": self.speaker, "sex": self.sex,
            "phones": None if self.phones is None else list(self.phones),
            "speech": None if self.speech is None else [[float(s), float(e)] for s, e in self.speech],
        }


_REQUIRED = ("id", "audio", "duration")
_OPTIONAL = ("text", "speaker", "sex", "phones", "speech")


def _parse(obj: object, where: str, base: Path) -> Utterance:
    """Validate one decoded JSON object and build the Utterance (audio made absolute)."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in _REQUIRED:
        if key not in obj:
            raise ManifestError(f"{where}: missing required key {key!r}")
    unknown = set(obj) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {sorted(unknown)}")

    def need_str(key: str, optional: bool) -> str | None:
        v = obj.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise ManifestError(f"{where}: key {key!r} must be a string, got {v!r}")
        return v

    utt_id = need_str("id", False)
    audio = need_str("audio", False)
    duration = obj["duration"]
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
        raise ManifestError(f"{where}: key 'duration' must be a non-negative number, got {duration!r}")
    text, speaker, sex = (need_str(k, True) for k in ("text", "speaker", "sex"))

    phones = obj.get("phones")
    if phones is not None:
        if not isinstance(phones, list) or not all(isinstance(p, str) for p in phones):
            raise ManifestError(f"{where}: key 'phones' must be a list of strings or null")
        phones = list(phones)

    speech = obj.get("speech")
    if speech is not None:
        ok = isinstance(speech, list) and all(
            isinstance(seg, list) and len(seg) == 2
            and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in seg)
            for seg in speech
        )
        if not ok:
            raise ManifestError(f"{where}: key 'speech' must be a list of [start, end] numbers or null")
        speech = [[float(s), float(e)] for s, e in speech]

    path = Path(audio)
    if not path.is_absolute():
        path = base / path
    return Utterance(utt_id, str(path), float(duration), text, speaker, sex, phones, speech)


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest; relative audio paths are resolved against the manifest's folder.

    Blank lines are skipped. Raises `ManifestError` naming the file and line on bad JSON, a
    missing required key, an unknown key or a wrongly typed value.
    """
    path = Path(path)
    base = path.resolve().parent
    utts: list[Utterance] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: invalid JSON ({e.msg})") from None
            utts.append(_parse(obj, where, base))
    return utts


def read_manifests(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Utterance]:
    """One manifest, or several read in order and concatenated (e.g. train-clean-100 and
    train-clean-360). Raises `ManifestError` naming both files if an utterance id repeats:
    the same utterance twice would be trained on twice as often, silently."""
    if isinstance(paths, (str, os.PathLike)):
        return read_manifest(paths)
    utts: list[Utterance] = []
    first_seen: dict[str, str] = {}
    for path in paths:
        for u in read_manifest(path):
            if u.id in first_seen:
                raise ManifestError(f"{path}: utterance {u.id!r} is also in {first_seen[u.id]}")
            first_seen[u.id] = str(path)
            utts.append(u)
    return utts


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> None:
    """Write utterances as JSON Lines, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for u in utts:
            f.write(json.dumps(u.to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def within_duration(utts: list[Utterance], max_seconds: float | None) -> list[Utterance]:
    """The utterances no longer than `max_seconds` (all when it is None or 0), the number
    dropped logged: a recipe's cap on utterance length (memory of the longest batch)."""
    if not max_seconds:
        return utts
    kept = [u for u in utts if u.duration <= max_seconds]
    if len(kept) < len(utts):
        log.warning("dropped %d utterances longer than %.0f s", len(utts) - len(kept), max_seconds)
    return kept
