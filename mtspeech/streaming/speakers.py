"""Speaker turns of a stream: online change detection and incremental clustering.

The encoder's speaker head (the task whose role is `Role.SPEAKER_EMBEDDING`) pools a whole
utterance into one embedding (`SpeakerTask.embed`, as `mtspeech evaluate` does for its EER).
A stream cannot wait for the utterance, so a `SpeakerTracker` pools short windows instead:

    speech frames ──(window_frames of them)──▶ embed ──▶ cosine distance to the current
    speaker's running centroid ──▶ close: same turn (the centroid moves)
                               └─▶ far: pending; pending windows that hold `change_frames` of
                                   speech, or that end at a pause, are settled:
                                   - near a known cluster (within `new_speaker_distance`): that
                                     speaker (a turn change unless it is the current one);
                                   - else, once they hold `new_speaker_frames` of speech: a new
                                     speaker (S1, S2, ...), its centroid their mean;
                                   - else at a pause: the nearest known speaker (no centroid moves);
                                   - else: still pending, the next far window adds evidence.
                               A pause settles less than `change_frames` of far speech only when it
                               is decisive (`switch_margin`); else it stays pending past the pause.

Why a new speaker waits for more than a change: a window of 0.64 s gives a noisy embedding, and a
cluster founded on one or two odd windows splits one voice into two labels, for good. A known
voice coming back is cheaper to get wrong (the next windows correct it), so it needs only
`change_frames`. Pending windows must also agree: a far window farther than
`new_speaker_distance` from their mean ends their run as a pause would, so windows of two
different odd sounds never add up to a speaker. The stream's first voice is founded the same
way (it has no current speaker to be close to), except that at a pause, or at a window unlike
its windows, it is founded on whatever they hold (there is no known speaker to hand them to).
With `first_speaker_frames`, less speech than that does not found it: it stays pending past a
pause and is dropped at a break, so one short odd first window cannot take S1 and leave the
voice itself to found S2. A final sent meanwhile carries no speaker (none is known yet); the
first turn, once founded, is dated at its run's first window and reaches back to the stream's
start for later labels (`speaker_of_span`), but nothing sent is taken back. Centroids are running means of the windows
assigned within their distance; a short burst handed to the nearest speaker at a pause is not
added, so it cannot drag a centroid away.

Why a pause needs a margin: settled at a pause, a single window of a sentence's last words
(0.24 to 0.64 s) decided a turn, and one odd window flipped the label to another speaker and,
a window later, back (on dev conversations most false changes were such one-window switches).
Such short evidence now switches only when it is closer to the speaker switched to than to the
current one by `switch_margin` (cosine distance); otherwise it stays pending past the pause, so
the next utterance's first windows confirm it (a change, still dated at the first far window) or
dismiss it (a window close to the current speaker forgets it, one unlike it drops it).

Only speech frames count (the VAD head says which; without one every frame does), and a
window never spans a pause (`end_segment`), so a turn change at a pause is found at the pause.
With `gap_frames`, a window also ends at a run of that many non-speech frames (shorter than the
endpointer's pause, which ends an utterance only after 1.2 s): the gap between two speakers'
turns is often shorter, and a window across it would pool the end of one voice with the start
of the next and date the change at the earlier voice's last words. Such a gap only ends the
window; unlike a pause it does not settle a far window into a turn.
A change is dated at the start of the first far window, so it lands within one window of the
true turn; it is *confirmed* later (after `change_frames` of a known voice or `new_speaker_frames`
of a new one, or at its pause). All of it is online: per window one embedding and one cosine
per cluster.

Why a change may move back (`backdate_windows`): a new voice's first windows are often odd (an
overlap, a window pooling the end of one voice with the start of the next, a voice whose
windows disagree with one another), so they are dropped as strays or settled to the speaker
talking before, and the change is dated at the first window of the run that founds or finds
the new voice, one or more windows late (seen on dev conversations among the changes found
more than 1 s late). Once the change is confirmed, the new voice has a centroid to compare
those windows with: the windows just before its first far window that are nearer the new
speaker's centroid than the previous one's join its turn (at most `backdate_windows`, never
back to the previous turn's start). Only the change's `start` moves, not when it is sent, nor
any centroid: an event already sent is never taken back.

Enrolment: named reference embeddings seed clusters that never move; a window joins one when
its cosine similarity is at least `enrol_similarity`, otherwise the speaker stays anonymous.

The defaults of `change_distance`, `new_speaker_distance`, `gap_frames`, `new_speaker_frames`,
`switch_margin` and `backdate_windows` are the demo model's setting chosen by `benchmarks/diarization.py` on
conversations of dev voices only (docs/results/diarization/demo.json, `tuning.head.chosen`),
which also reports them on held-out voices. `first_speaker_frames` stays off: searched the same way
on dev voices it was not chosen (docs/results/diarization/dev-first-speaker-frames.json). Another model's speaker head spreads its embeddings differently: run the
benchmark on it (`--recordings` makes the tuning replays cheap).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from mtspeech.streaming.speaker_settings import (  # noqa: F401 (MAX_ENROLLED, check_enrolled re-exported)
    MAX_ENROLLED, SpeakerTurnConfig, check_enrolled)
from mtspeech.streaming.stream import FinalEvent, SpeakerChangeEvent

MAX_TURNS_KEPT = 64  # turns remembered for labelling words (finals only ask about recent ones)
RECENT_WINDOWS_KEPT = 64  # windows remembered for backdating (the far windows of a change come after them)


@dataclass
class _Cluster:
    label: str
    centroid: np.ndarray  # (E,) L2-normalised
    count: int  # windows averaged in (enrolled references never move)
    enrolled: bool = False


@dataclass
class _Window:
    start_frame: int
    frames: int
    embedding: np.ndarray  # (E,) L2-normalised


def _unit(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float32)
    norm = float(np.linalg.norm(e))
    return e / norm if norm > 0 and math.isfinite(norm) else np.zeros_like(e)


class SpeakerTracker:
    """One stream's speaker turns (see the module doc). Feed it with `push` per decoded chunk
    and `end_segment` at each pause (the recognizer calls it when an utterance ends); read new
    turns with `changes()` and labels with `speaker_at(frame)`.

    `embed(frames (N, D)) -> (E,)`: one embedding from N frames (`mtspeech.streaming.encoder.SpeakerFrames.embed`).
    `enrolled`: name → L2-normalised (E,) reference (`check_enrolled`)."""

    def __init__(self, embed: Callable[[torch.Tensor], np.ndarray], frame_shift_s: float,
                 config: SpeakerTurnConfig | None = None, enrolled: Mapping[str, np.ndarray] | None = None) -> None:
        self.config = config or SpeakerTurnConfig()
        self.embed = embed
        self.frame_shift_s = frame_shift_s
        self.clusters = [_Cluster(name, e, 1, enrolled=True) for name, e in (enrolled or {}).items()]
        self._anonymous = 0  # S1, S2, ... given so far
        self._speech: list[torch.Tensor] = []  # speech frames (n_i, D) of the window being filled
        self._speech_frames = 0
        self._window_start: int | None = None  # stream frame of the window's first speech frame
        self._gap = 0  # non-speech frames since the last speech frame
        self._current: _Cluster | None = None
        self._far: list[_Window] = []  # consecutive windows far from the current speaker
        self._turns: list[tuple[int, str]] = []  # (start frame, label), in stream order
        self._changes: list[SpeakerChangeEvent] = []
        self._recent: list[_Window] = []  # the last windows embedded, for backdate_windows
        self._frames_seen = 0
        self.windows_embedded = 0  # how often `embed` ran: the tracker's cost

    # -- input --------------------------------------------------------------------------------

    def push(self, frames: torch.Tensor, speech: np.ndarray | None, start_frame: int) -> None:
        """frames (n, D): the speaker head's frames of one chunk, from stream frame `start_frame`;
        speech (n,) bool: which are speech (None: all)."""
        n = frames.shape[0]
        self._frames_seen = start_frame + n
        keep = np.ones(n, dtype=bool) if speech is None else np.asarray(speech, dtype=bool)[:n]
        t = 0
        while t < n:
            if not keep[t]:
                self._gap += 1
                if self._gap == self.config.gap_frames:
                    self._end_window()
                t += 1
                continue
            self._gap = 0
            if self._window_start is None:
                self._window_start = start_frame + t
            take = min(n - t, self.config.window_frames - self._speech_frames)
            run = take if keep[t : t + take].all() else int(np.argmin(keep[t : t + take]))
            self._speech.append(frames[t : t + run])
            self._speech_frames += run
            t += run
            if self._speech_frames == self.config.window_frames:
                self._close_window()

    def end_segment(self) -> None:
        """A pause: embed the rest of the window if long enough, and settle far windows (a voice
        that differed up to a pause is a new turn however short)."""
        self._end_window()
        if self._far:
            self._settle(at_pause=True)

    # -- output -------------------------------------------------------------------------------

    def changes(self) -> list[SpeakerChangeEvent]:
        """Turns that began since the last call, in order."""
        out, self._changes = self._changes, []
        return out

    @property
    def current(self) -> str | None:
        """The label of the speaker talking now (None before the first window)."""
        return None if self._current is None else self._current.label

    def speaker_at(self, frame: float) -> str | None:
        """The label of the turn holding stream frame `frame` (the first turn for frames before
        it; None before any turn)."""
        label = self._turns[0][1] if self._turns else None
        for start, who in self._turns:
            if start > frame:
                break
            label = who
        return label

    def speaker_of_span(self, start_frame: float, end_frame: float) -> str | None:
        """The label of the turn that overlaps stream frames [start_frame, end_frame) most (a
        word at a turn's start may begin a frame before the voice's first speech frame)."""
        if not self._turns:
            return None
        starts = [-math.inf] + [start for start, _ in self._turns[1:]]  # the first turn reaches back
        ends = starts[1:] + [math.inf]
        best, best_overlap = None, -math.inf
        for start, end, (_, who) in zip(starts, ends, self._turns):
            overlap = min(end, end_frame) - max(start, start_frame)
            if overlap >= best_overlap:  # a tie goes to the later turn: a new voice's first word
                best, best_overlap = who, overlap
        return best

    def dominant_voice(self) -> tuple[np.ndarray, int, int] | None:
        """(centroid (E,), its windows, the voices heard) of the voice heard most, None if no
        window was embedded: an enrolment reference from a recording of one voice."""
        heard = [c for c in self.clusters if not c.enrolled and c.count]
        if not heard:
            return None
        voice = max(heard, key=lambda c: c.count)
        return voice.centroid, voice.count, len(heard)

    # -- internals ----------------------------------------------------------------------------

    def _end_window(self) -> None:
        """The window being filled ends early: embedded if long enough, else dropped."""
        if self._speech_frames >= self.config.min_window_frames:
            self._close_window()
        self._speech, self._speech_frames, self._window_start = [], 0, None

    def _close_window(self) -> None:
        frames = torch.cat(self._speech)
        window = _Window(self._window_start, frames.shape[0], _unit(self.embed(frames)))
        self.windows_embedded += 1
        self._speech, self._speech_frames, self._window_start = [], 0, None
        self._recent.append(window)
        del self._recent[:-RECENT_WINDOWS_KEPT]
        if self._far and 1.0 - float(window.embedding @ self._pooled_far()) > self.config.new_speaker_distance:
            # a window that would not join the pending far windows' cluster ends their run, as a
            # pause would: pending windows found a speaker only if they are one voice
            self._settle(at_pause=True, broken=True)
        if self._current is not None and \
                1.0 - float(window.embedding @ self._current.centroid) <= self.config.change_distance:
            self._far = []  # a stray window (a cough, an overlap) is forgotten
            self._add(self._current, [window])
            return
        self._far.append(window)  # far from the current speaker (or the stream's first voice)
        if self._current is None or sum(w.frames for w in self._far) >= self.config.change_frames:
            self._settle(at_pause=False)

    def _pooled_far(self) -> np.ndarray:
        return _unit(np.mean([w.embedding for w in self._far], axis=0))

    def _settle(self, at_pause: bool, broken: bool = False) -> None:
        """Decide what the far windows are: a known speaker (a turn if not the current one), a new
        speaker once they hold `new_speaker_frames` of speech, or, at a pause before that, the
        nearest known speaker's (too little to found a voice on). Without a pause and a match,
        they stay pending: the next far window brings more evidence. At a pause (`at_pause`) or a
        window unlike them (`broken` too), too little evidence that is not decisive stays
        pending past the pause, or is dropped at a break."""
        cfg, windows = self.config, self._far
        pooled = self._pooled_far()
        who = self._match(pooled)
        if at_pause and not self._decisive(pooled, who):
            if broken:
                self._far = []
            return
        if who is None:
            enough = sum(w.frames for w in windows) >= cfg.new_speaker_frames
            if not enough and not at_pause:
                return
            if not enough and self._current is not None:
                self._far = []  # centroids stay means of windows within their distance: not added
                self._switch(max(self.clusters, key=lambda c: float(pooled @ c.centroid)), windows[0].start_frame)
                return
            if not enough and cfg.first_speaker_frames is not None and \
                    sum(w.frames for w in windows) < cfg.first_speaker_frames:
                if broken:  # the first voice: too little to found it on; pending past a pause, dropped at a break
                    self._far = []
                return
            self._anonymous += 1
            who = _Cluster(f"S{self._anonymous}", pooled, 0)
            self.clusters.append(who)
        self._far = []
        self._add(who, windows)
        self._switch(who, windows[0].start_frame)

    def _decisive(self, pooled: np.ndarray, who: _Cluster | None) -> bool:
        """Whether the pending far windows (pooled (E,)) may be settled now: they hold
        `change_frames` of speech, or there is no current speaker, or they are closer to the
        speaker they would switch to (`who`, else the nearest) than to the current one by
        `switch_margin`."""
        cfg = self.config
        if self._current is None or cfg.switch_margin is None or \
                sum(w.frames for w in self._far) >= cfg.change_frames:
            return True
        target = who or max(self.clusters, key=lambda c: float(pooled @ c.centroid))
        gain = float(pooled @ target.centroid) - float(pooled @ self._current.centroid)  # = d(current) - d(target)
        return gain >= cfg.switch_margin

    def _switch(self, who: _Cluster, start: int) -> None:
        """`who` talks from stream frame `start`: a turn (and its event) unless `who` talks already."""
        if who is self._current:
            return
        if self._current is not None and self.config.backdate_windows:
            start = self._backdate(who, start)
        self._changes.append(SpeakerChangeEvent(who.label, self.current, round(start * self.frame_shift_s, 3),
                                                round(self._frames_seen * self.frame_shift_s, 3)))
        self._current = who
        self._turns.append((start, who.label))
        del self._turns[:-MAX_TURNS_KEPT]

    def _backdate(self, who: _Cluster, start: int) -> int:
        """The start of `who`'s turn moved back over the windows just before stream frame `start`
        (at most `backdate_windows`, none at or before the current turn's start) while each is nearer
        `who`'s centroid than the current speaker's."""
        since = self._turns[-1][0]
        before = [w for w in self._recent if since < w.start_frame < start][-self.config.backdate_windows:]
        for w in reversed(before):
            if float(w.embedding @ who.centroid) <= float(w.embedding @ self._current.centroid):
                break
            start = w.start_frame
        return start

    def _match(self, e: np.ndarray) -> _Cluster | None:
        """The nearest cluster within its distance (`new_speaker_distance`; an enrolled one:
        `enrol_similarity`), or past `max_speakers` the nearest anonymous one; else None."""
        cfg = self.config
        best, best_d = None, math.inf
        for c in self.clusters:
            d = 1.0 - float(e @ c.centroid)
            limit = 1.0 - cfg.enrol_similarity if c.enrolled else cfg.new_speaker_distance
            if d <= limit and d < best_d:
                best, best_d = c, d
        anonymous = [c for c in self.clusters if not c.enrolled]
        if best is None and len(anonymous) >= cfg.max_speakers:
            best = max(anonymous, key=lambda c: float(e @ c.centroid))
        return best

    @staticmethod
    def _add(cluster: _Cluster, windows: list[_Window]) -> None:
        if cluster.enrolled:
            return  # a reference stays as enrolled
        total = cluster.centroid * cluster.count + sum(w.embedding for w in windows)
        cluster.count += len(windows)
        cluster.centroid = _unit(total)


def label_final(final: FinalEvent, tracker: SpeakerTracker) -> FinalEvent:
    """`final` with each word's speaker (the turn it overlaps most) and the utterance's (the one
    that holds most of its words' time)."""
    frame_s = tracker.frame_shift_s
    who = tuple(tracker.speaker_of_span(w.start / frame_s, w.end / frame_s) for w in final.words)
    spoken: Counter = Counter()
    for w, label in zip(final.words, who):
        spoken[label] += w.end - w.start
    speaker = spoken.most_common(1)[0][0] if spoken else tracker.current
    return dataclasses.replace(final, speaker=speaker, word_speakers=who)


def new_tracker(head, step_roles: Sequence[str], frame_shift_s: float, config: SpeakerTurnConfig | None = None,
                enrolled: Mapping[str, Sequence[float]] | None = None) -> SpeakerTracker:
    """A tracker for one stream of a recognizer whose speaker head is `head` (`SpeakerFrames`,
    or None) and whose encoder step computes `step_roles`. ValueError, saying what is missing,
    when the model has no speaker head, the step does not compute it, or `enrolled` is bad."""
    if head is None:
        raise ValueError("speaker turns need a model with a speaker-embedding task; this model has none")
    if "speaker" not in step_roles:
        raise ValueError("speaker turns: this encoder step does not output the speaker head's frames "
                         "(an ONNX graph exported before speaker turns): export it again")
    return SpeakerTracker(head.embed, frame_shift_s, config, check_enrolled(enrolled, head.embed_dim))
