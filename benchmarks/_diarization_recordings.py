"""Saved recordings for the diarization benchmark (`benchmarks/diarization.py --recordings DIR`).

Decoding the conversations is the benchmark's cost; what the speaker tracker was fed (per chunk
the speaker head's frames and the VAD's speech mask, every pause) does not depend on the
tracker's settings, so one decoding serves every later tuning run. A set's recordings are saved
as `DIR/<set>.pt` (plain tensors, lists and strings: read back with `torch.load(weights_only=True)`)
together with the key they were made under (the model file, the corpus and the conversation
arguments); a file whose key differs is recorded again and overwritten, never reused. Keep DIR
out of git (under `exp/`, which is ignored): it holds the model's frames, megabytes per set.

`record` checked, when it recorded, that a replay at the served settings gives exactly the served
events; a saved recording is not checked again, since the point of saving is to replay it with
another tracker (other settings, or changed clustering code), whose events differ by design.
The conversations themselves are rebuilt from the corpus on every run (reading audio is cheap)
and each saved recording is checked against its conversation's turns, so a stale file cannot
pair one conversation's frames with another's reference.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from _diarization_scoring import Recording, attach_embedders, record
from mtspeech.streaming.speakers import SpeakerTurnConfig
from mtspeech.streaming.stream import SpeakerChangeEvent

log = logging.getLogger(__name__)
FORMAT = 1  # bump when what a file holds changes


def recording_key(model: str | Path, **arguments) -> dict:
    """What a set's recordings depend on: the model file (path, size, modification time) and
    the arguments that build and feed the conversations."""
    p = Path(model)
    stat = p.stat()
    return {"format": FORMAT, "model": str(p.resolve()), "model_bytes": stat.st_size,
            "model_mtime_ns": stat.st_mtime_ns, **{k: arguments[k] for k in sorted(arguments)}}


def _to_file(r: Recording) -> dict:
    calls = [None if c is None else (c[0], c[1], None if c[2] is None else torch.from_numpy(np.asarray(c[2], bool)))
             for c in r.calls]
    return {"id": r.conversation.id, "turns": [[t.speaker, [list(s) for s in t.speech]] for t in r.conversation.turns],
            "calls": calls, "frames": r.frames, "frame_shift_s": r.frame_shift_s,
            "live_events": [list(dataclasses.astuple(e)) for e in r.live_events],
            "recorded_with": dataclasses.asdict(r.recorded_with)}


def _from_file(d: dict, conversation, rec, peer) -> Recording:
    turns = [[t.speaker, [list(s) for s in t.speech]] for t in conversation.turns]
    if d["id"] != conversation.id or d["turns"] != turns:
        raise ValueError(f"saved recording {d['id']} does not match conversation {conversation.id}: "
                         "delete the recordings folder and run again")
    calls = [None if c is None else (c[0], c[1], None if c[2] is None else c[2].numpy()) for c in d["calls"]]
    r = Recording(conversation, calls, d["frame_shift_s"], [SpeakerChangeEvent(*e) for e in d["live_events"]],
                  frames=d["frames"], recorded_with=SpeakerTurnConfig(**d["recorded_with"]))
    return attach_embedders(r, rec, peer)


def load_or_record(folder: str | Path | None, name: str, key: dict, conversations: list, rec, peer) -> list[Recording]:
    """The recordings of `conversations` (set `name`): read from `folder/<name>.pt` when its key is
    `key`, else recorded (through `rec`, see `record`) and, with a folder, saved there."""
    path = None if folder is None else Path(folder) / f"{name}.pt"
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == key and len(saved["recordings"]) == len(conversations):
            log.info("%s: replaying %d saved recordings", path, len(conversations))
            return [_from_file(d, c, rec, peer) for d, c in zip(saved["recordings"], conversations)]
        log.info("%s: recorded under other arguments or another model: recording again", path)
    recordings = [record(rec, c, peer) for c in conversations]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"key": key, "recordings": [_to_file(r) for r in recordings]}, tmp)
        tmp.replace(path)  # atomic: an interrupted save leaves no half file to be read back
    return recordings
