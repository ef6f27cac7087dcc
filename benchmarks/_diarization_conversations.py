"""Conversations for the diarization benchmark (`benchmarks/diarization.py`): the synthetic ones
built from a corpus split's voices, and the real 30 s sample that the pyannote.audio wheel ships.

Synthetic (`build_conversations`): each conversation draws 2 to 4 speakers of one manifest
split and lets them take turns. A speaker's utterances, cut to their speech (the manifest's
exact `speech` segments: the synthesizer knows where it spoke), are laid end to end on a
"tape"; a turn takes whole speech segments off the tape until it lasts a drawn 1 to 10 s (a
segment past 10 s is cut there). Turns follow one another after a pause, or start before the
previous one ends (overlap). The reference is every turn's speech segments, labelled with its
speaker. A speaker whose tape runs out starts it again: the split's few utterances per voice
(dev: 3 or 4) are then heard twice, which no speaker-turn rule can exploit (each stream
clusters from scratch). Everything is drawn from `numpy.random.default_rng([seed, index])`.

The pyannote sample (`pyannote_sample`): `sample/sample.wav` (16 kHz, 30 s, two people) and
its `sample.rttm`, read out of the pyannote.audio wheel. The wheel is MIT-licensed (its
`licenses/LICENSE`) and is only downloaded into a cache folder (`pip download --no-deps`), never
installed or committed; only the numbers measured on it are.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PYANNOTE_WHEEL = "pyannote.audio==4.0.7"  # pinned: the sample (and so the numbers) are that release's
SAMPLE_WAV, SAMPLE_RTTM = "pyannote/audio/sample/sample.wav", "pyannote/audio/sample/sample.rttm"


@dataclass(frozen=True)
class Turn:
    """One speaker's turn: speech segments [(start_s, end_s)] on the conversation's clock."""

    speaker: str
    speech: tuple[tuple[float, float], ...]

    @property
    def start(self) -> float:
        return self.speech[0][0]

    @property
    def end(self) -> float:
        return self.speech[-1][1]


@dataclass(frozen=True)
class Conversation:
    """audio (N,) float32 at `sample_rate`; `turns` in order of their start."""

    id: str
    audio: np.ndarray
    sample_rate: int
    turns: tuple[Turn, ...]

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def speakers(self) -> list[str]:
        return sorted({t.speaker for t in self.turns})

    def reference(self):
        """The reference as a `pyannote.core.Annotation` (overlapping speech kept)."""
        from pyannote.core import Annotation, Segment

        ref = Annotation(uri=self.id)
        for i, turn in enumerate(self.turns):
            for j, (s, e) in enumerate(turn.speech):
                ref[Segment(s, e), f"{i}.{j}"] = turn.speaker
        return ref

    def changes(self) -> list[float]:
        """When the floor passes to another speaker: the start of each turn whose speaker differs
        from the last turn's. A turn that lies inside another speaker's turn (a back-channel,
        as in the pyannote sample) does not take the floor and is skipped."""
        floor = [t for t in self.turns if not any(o.speaker != t.speaker and o.start <= t.start and t.end <= o.end
                                                   for o in self.turns)]
        return [b.start for a, b in zip(floor, floor[1:]) if a.speaker != b.speaker]


# ----------------------------------------------------------------------------- synthetic


@dataclass(frozen=True)
class ConversationShape:
    """What `build_conversations` draws (seconds). `turns`: None: turns until `min_seconds`."""

    speakers: tuple[int, int] = (2, 4)
    turn_s: tuple[float, float] = (1.0, 10.0)
    pause_s: tuple[float, float] = (0.2, 1.5)
    overlap_prob: float = 0.2
    overlap_s: tuple[float, float] = (0.2, 1.0)
    min_seconds: float = 45.0
    turns: int | None = None
    lead_s: float = 0.5  # silence before the first turn and after the last

    def __post_init__(self) -> None:
        lo, hi = self.speakers
        if not 2 <= lo <= hi:
            raise ValueError(f"speakers={self.speakers}: expected 2 <= low <= high")
        if not 0 < self.turn_s[0] <= self.turn_s[1]:
            raise ValueError(f"turn_s={self.turn_s}: expected 0 < low <= high")
        if not 0.0 <= self.overlap_prob <= 1.0:
            raise ValueError(f"overlap_prob={self.overlap_prob}: expected in [0, 1]")
        if self.turns is not None and self.turns < hi:
            raise ValueError(f"turns={self.turns}: fewer than the {hi} speakers that must all speak")


class _Tape:
    """One speaker's speech, utterance after utterance, cut to their speech segments."""

    def __init__(self, clips: list[tuple[np.ndarray, list[tuple[float, float]]]], rate: int) -> None:
        self.rate, parts, self.segments, t = rate, [], [], 0.0
        for audio, speech in clips:
            first, last = speech[0][0], speech[-1][1]
            parts.append(audio[int(round(first * rate)) : int(round(last * rate))])
            self.segments += [(t + s - first, t + e - first) for s, e in speech]
            t += len(parts[-1]) / rate
        self.audio = np.concatenate(parts)
        self.next = 0  # index of the next segment a turn takes

    def take(self, target_s: float, max_s: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """Whole segments from the next one on, until they span `target_s` (cut at `max_s`):
        (audio, segments relative to the audio's start)."""
        segs = []
        while not segs or segs[-1][1] - segs[0][0] < target_s:
            if self.next == len(self.segments):  # the tape ran out: start it again
                self.next = 0
                if segs:
                    break
            segs.append(self.segments[self.next])
            self.next += 1
        start = segs[0][0]
        segs = [(s - start, min(e - start, max_s)) for s, e in segs if s - start < max_s]
        a = self.audio[int(round(start * self.rate)) : int(round((start + segs[-1][1]) * self.rate))]
        return a, segs


def build_conversations(manifests: list[str | Path], count: int, seed: int, sample_rate: int,
                        shape: ConversationShape = ConversationShape(), prefix: str = "") -> list[Conversation]:
    """`count` conversations among the speakers of `manifests` (each utterance needs `speaker`
    and `speech`), audio at `sample_rate`. ValueError when they hold too few speakers."""
    from mtspeech.data.audio import load_audio
    from mtspeech.data.manifest import read_manifest

    by_speaker: dict[str, list] = {}
    for manifest in manifests:
        for u in read_manifest(manifest):
            if u.speaker is None or not u.speech:
                raise ValueError(f"{manifest}: utterance {u.id} has no speaker or no speech segments")
            by_speaker.setdefault(u.speaker, []).append(u)
    pool = sorted(by_speaker)
    if len(pool) < shape.speakers[1]:
        raise ValueError(f"{', '.join(map(str, manifests))}: {len(pool)} speakers, conversations need up to "
                         f"{shape.speakers[1]}")
    loaded: dict[str, np.ndarray] = {}

    def clip(u):
        if u.id not in loaded:
            loaded[u.id] = load_audio(u.audio, sample_rate).numpy()
        return loaded[u.id], [tuple(s) for s in u.speech]

    out = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        k = int(rng.integers(shape.speakers[0], shape.speakers[1] + 1))
        cast = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
        tapes = {}
        for spk in cast:
            utts = [by_speaker[spk][i] for i in rng.permutation(len(by_speaker[spk]))]
            tapes[spk] = _Tape([clip(u) for u in utts], sample_rate)
        out.append(_lay_out(f"{prefix}{index:03d}", cast, tapes, rng, shape, sample_rate))
    return out


def _lay_out(conv_id: str, cast: list[str], tapes: dict, rng, shape: ConversationShape, rate: int) -> Conversation:
    """Turns of `cast` (each speaks once in a random order first, then anyone but the last
    speaker), placed after pauses or overlapping the previous turn; the audio is their sum."""
    order = [cast[i] for i in rng.permutation(len(cast))]
    placed: list[tuple[float, np.ndarray, Turn]] = []
    t = shape.lead_s
    while True:
        if len(placed) >= len(order):
            others = [s for s in cast if s != order[len(placed) - 1]]
            order.append(others[int(rng.integers(len(others)))])
        spk = order[len(placed)]
        audio, segs = tapes[spk].take(float(rng.uniform(*shape.turn_s)), shape.turn_s[1])
        length = segs[-1][1]
        if placed:
            prev = placed[-1][2]
            if rng.random() < shape.overlap_prob:  # start before the last turn ends, never inside it
                t = prev.end - min(float(rng.uniform(*shape.overlap_s)), 0.5 * min(length, prev.end - prev.start))
            else:
                t = prev.end + float(rng.uniform(*shape.pause_s))
        placed.append((t, audio, Turn(spk, tuple((round(t + s, 4), round(t + e, 4)) for s, e in segs))))
        enough = (len(placed) >= shape.turns) if shape.turns is not None else \
            (placed[-1][2].end >= shape.min_seconds and len(placed) >= len(cast))
        if enough:
            break
    total = int(round((max(p[2].end for p in placed) + shape.lead_s) * rate))
    mix = np.zeros(total, dtype=np.float32)
    for start, audio, _ in placed:
        i = int(round(start * rate))
        mix[i : i + len(audio)] += audio[: total - i]
    return Conversation(conv_id, mix, rate, tuple(p[2] for p in placed))


# ----------------------------------------------------------------------------- the pyannote sample


def pyannote_wheel(cache_dir: str | Path) -> Path:
    """The pinned pyannote.audio wheel in `cache_dir`, downloaded there (without its
    dependencies, and never installed) if absent. RuntimeError saying what to do when the
    download fails (offline: put the wheel there by hand, or leave the sample out)."""
    cache_dir = Path(cache_dir)
    version = PYANNOTE_WHEEL.split("==")[1]
    found = sorted(cache_dir.glob(f"pyannote_audio-{version}-*.whl"))
    if found:
        return found[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(cache_dir),
           PYANNOTE_WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache_dir.glob(f"pyannote_audio-{version}-*.whl"))
    if done.returncode != 0 or not found:
        raise RuntimeError(f"could not download {PYANNOTE_WHEEL} into {cache_dir} (offline?): "
                           f"{done.stderr.strip()[-300:]}\nPut the wheel in {cache_dir} by hand, or run "
                           "without the pyannote sample (--no-pyannote-sample)")
    return found[0]


def pyannote_sample(wheel: str | Path, sample_rate: int) -> Conversation:
    """The wheel's `sample.wav` (at `sample_rate`) and its RTTM reference as a Conversation
    (one turn per RTTM line). ValueError naming the wheel if either file is missing."""
    from mtspeech.data.audio import decode_audio_bytes

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in (SAMPLE_WAV, SAMPLE_RTTM):
            if name not in names:
                raise ValueError(f"{wheel}: no {name} inside (another pyannote.audio release?)")
        audio = decode_audio_bytes(z.read(SAMPLE_WAV), sample_rate, SAMPLE_WAV).numpy()
        rttm = z.read(SAMPLE_RTTM).decode()
    turns = []
    for line in rttm.splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":  # SPEAKER uri channel onset duration <NA> <NA> who <NA> <NA>
            onset, duration = float(f[3]), float(f[4])
            turns.append(Turn(f[7], ((onset, round(onset + duration, 4)),)))
    if not turns:
        raise ValueError(f"{wheel}: {SAMPLE_RTTM} holds no SPEAKER line")
    return Conversation("pyannote-sample", audio, sample_rate, tuple(sorted(turns, key=lambda t: t.start)))
