"""A stream's speaker-turn settings and its enrolled voices, checked (`mtspeech/streaming/speakers.py`
uses them; the server's protocol validates requests against them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

MAX_ENROLLED = 32  # named references a stream may bring
MAX_BACKDATE_WINDOWS = 8  # the most backdate_windows may be


@dataclass(frozen=True)
class SpeakerTurnConfig:
    """How a stream's speech is cut into turns. Frames are encoder frames (40 ms each);
    distances are cosine distances (1 - cosine similarity) between L2-normalised embeddings."""

    window_frames: int = 16  # speech frames pooled into one embedding
    min_window_frames: int = 6  # a shorter rest at a pause is dropped, not embedded
    change_distance: float = 0.1  # farther than this from the current speaker: maybe a change
    change_frames: int = 24  # far speech this long (without a pause) confirms the change
    new_speaker_distance: float = 0.4  # farther than this from every cluster: a new speaker
    enrol_similarity: float = 0.6  # cosine similarity an enrolled name needs, else anonymous
    max_speakers: int = 8  # past this, a window joins its nearest cluster
    gap_frames: int | None = 3  # non-speech frames that end a window (None: only pauses do)
    new_speaker_frames: int = 32  # far speech a voice heard nowhere before needs to become a speaker
    # How much closer (cosine distance) to the speaker switched to than to the current one less
    # than `change_frames` of far speech must be for a pause to settle a switch (None: any is enough).
    switch_margin: float | None = 0.2
    # At most this many windows just before a change's first far window, each nearer the new speaker's
    # centroid than the previous one's, join the new turn: its start moves back over them (0: never).
    backdate_windows: int = 4
    # Speech the stream's first voice must hold before a pause, or a window unlike it, may found it
    # (None: any window may; without either it waits for `new_speaker_frames`, as every new voice does).
    first_speaker_frames: int | None = None

    def __post_init__(self) -> None:
        for key in ("window_frames", "min_window_frames", "change_frames", "new_speaker_frames", "max_speakers"):
            if getattr(self, key) < 1:
                raise ValueError(f"speaker turns: {key}={getattr(self, key)}: expected >= 1")
        if not 0 <= self.backdate_windows <= MAX_BACKDATE_WINDOWS:
            raise ValueError(f"speaker turns: backdate_windows={self.backdate_windows}: expected 0 to "
                             f"{MAX_BACKDATE_WINDOWS}")
        if self.first_speaker_frames is not None and not 1 <= self.first_speaker_frames <= self.new_speaker_frames:
            raise ValueError(f"speaker turns: first_speaker_frames={self.first_speaker_frames}: expected None or "
                             f"1 to new_speaker_frames={self.new_speaker_frames} (past it a voice is founded anyway)")
        if self.gap_frames is not None and self.gap_frames < 1:
            raise ValueError(f"speaker turns: gap_frames={self.gap_frames}: expected None or >= 1")
        if self.new_speaker_frames < self.change_frames:
            raise ValueError(f"speaker turns: new_speaker_frames={self.new_speaker_frames} is below "
                             f"change_frames={self.change_frames}: a new speaker is a change, it needs at least "
                             "as much")
        if self.min_window_frames > self.window_frames:
            raise ValueError(f"speaker turns: min_window_frames={self.min_window_frames} exceeds "
                             f"window_frames={self.window_frames}")
        for key in ("change_distance", "new_speaker_distance"):
            if not 0.0 < getattr(self, key) < 2.0:
                raise ValueError(f"speaker turns: {key}={getattr(self, key)}: expected in (0, 2)")
        if self.switch_margin is not None and not 0.0 <= self.switch_margin < 2.0:
            raise ValueError(f"speaker turns: switch_margin={self.switch_margin}: expected None or in [0, 2)")
        if not -1.0 <= self.enrol_similarity <= 1.0:
            raise ValueError(f"speaker turns: enrol_similarity={self.enrol_similarity}: expected in [-1, 1]")



def check_enrolled(enrolled: Mapping[str, Sequence[float]] | None, embed_dim: int) -> dict[str, np.ndarray]:
    """Named reference embeddings → name: L2-normalised (E,) float arrays. ValueError (saying
    which name and why) on too many, a wrong dimension, a non-finite value or a zero vector."""
    if not enrolled:
        return {}
    if len(enrolled) > MAX_ENROLLED:
        raise ValueError(f"{len(enrolled)} enrolled speakers: at most {MAX_ENROLLED}")
    out = {}
    for name, values in enrolled.items():
        e = np.asarray(values, dtype=np.float64)
        if e.shape != (embed_dim,):
            raise ValueError(f"enrolled speaker {name[:40]!r}: embedding of shape {e.shape}, "
                             f"the model's speaker head gives ({embed_dim},)")
        if not np.all(np.isfinite(e)):
            raise ValueError(f"enrolled speaker {name[:40]!r}: embedding holds NaN or infinity")
        with np.errstate(over="ignore"):  # a norm past float64 is refused just below
            norm = float(np.linalg.norm(e))
        if norm == 0.0 or not math.isfinite(norm):
            raise ValueError(f"enrolled speaker {name[:40]!r}: embedding of norm {norm}: expected a "
                             "nonzero vector of moderate size")
        out[name] = (e / norm).astype(np.float32)
    return out
