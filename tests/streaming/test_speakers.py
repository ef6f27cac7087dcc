"""Speaker turns (mtspeech/streaming/speakers.py) on synthetic embedding sequences.

Each "voice" is a random unit vector; a frame is its voice plus noise, and the tracker's
`embed` is the frames' mean, so these tests check the change detector and the clustering,
not a speaker model (tests/serve/test_speaker_turns.py streams through the server).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mtspeech.alignment import Word
from mtspeech.data.geometry import FrameGeometry
from mtspeech.streaming import StreamingRecognizer
from mtspeech.streaming.stream import SpeakerChangeEvent
from mtspeech.streaming.speakers import (MAX_ENROLLED, SpeakerTracker, SpeakerTurnConfig, check_enrolled,
                                         label_final)
from mtspeech.streaming.stream import FinalEvent
from mtspeech.streaming.speakers import SpeakerTurnConfig as TurnConfig
from tiny_asr import ScriptedSpeaker, ScriptedVAD, conversation, tiny_recognizer

DIM, CHUNK = 16, 8
FRAME_S = FrameGeometry().frame_shift_s


def voices(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM))
    return list(v / np.linalg.norm(v, axis=1, keepdims=True))


def frames_of(plan: list[tuple[np.ndarray | None, int]], seed: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """[(voice or None for a pause, frames)] → frames (T, D) and speech (T,)."""
    rng = np.random.default_rng(seed)
    rows, speech = [], []
    for voice, n in plan:
        base = np.zeros(DIM) if voice is None else voice
        rows.append(base + 0.3 * rng.standard_normal((n, DIM)) / np.sqrt(DIM))
        speech += [voice is not None] * n
    return torch.tensor(np.concatenate(rows), dtype=torch.float32), np.array(speech)


def mean_embed(frames: torch.Tensor) -> np.ndarray:
    return frames.mean(0).numpy()


def run(tracker: SpeakerTracker, frames: torch.Tensor, speech: np.ndarray | None, pauses_end_segments: bool = True):
    """Push chunk by chunk, as the recognizer does; a pause after speech ends a segment."""
    changes = []
    for t0 in range(0, frames.shape[0], CHUNK):
        sp = None if speech is None else speech[t0 : t0 + CHUNK]
        tracker.push(frames[t0 : t0 + CHUNK], sp, t0)
        if pauses_end_segments and sp is not None and not sp[-1] and (t0 == 0 or speech[t0 - 1]):
            tracker.end_segment()
        changes += tracker.changes()
    tracker.end_segment()
    return changes + tracker.changes()


def test_two_voices_change_within_one_window_and_a_returning_voice_keeps_its_label():
    a, b = voices(2)
    frames, _ = frames_of([(a, 75), (b, 75), (a, 50)])  # 0-3 s A, 3-6 s B, 6-8 s A; no pauses
    tracker = SpeakerTracker(mean_embed, FRAME_S)
    changes = run(tracker, frames, None)
    assert [(c.speaker, c.previous) for c in changes] == [("S1", None), ("S2", "S1"), ("S1", "S2")]
    window_s = tracker.config.window_frames * FRAME_S
    assert changes[0].start == 0.0
    assert abs(changes[1].start - 3.0) <= window_s and abs(changes[2].start - 6.0) <= window_s
    # a voice heard before is confirmed after `change_frames` of it, a new one after
    # `new_speaker_frames`, counted in whole windows after the one that straddles the change
    cfg = tracker.config
    whole = lambda frames: -(-frames // cfg.window_frames) * window_s  # noqa: E731 (windows that hold them)
    assert changes[1].start < changes[1].detected_at <= 3.0 + window_s + whole(cfg.new_speaker_frames) + CHUNK * FRAME_S
    assert changes[2].start < changes[2].detected_at <= 6.0 + window_s + whole(cfg.change_frames) + CHUNK * FRAME_S
    assert tracker.speaker_at(1.0 / FRAME_S) == "S1" and tracker.speaker_at(4.5 / FRAME_S) == "S2"


@pytest.mark.parametrize("new_speaker_frames", [24, 48, 64])
def test_a_new_voice_is_confirmed_within_new_speaker_frames(new_speaker_frames):
    a, b = voices(2, seed=11)
    frames, _ = frames_of([(a, 100), (b, 100)])  # B from 4 s, with no pause to help
    tracker = SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(new_speaker_frames=new_speaker_frames))
    changes = run(tracker, frames, None)
    assert [c.speaker for c in changes] == ["S1", "S2"]
    windows = -(-new_speaker_frames // 16)
    assert changes[1].start == pytest.approx(4.0, abs=16 * FRAME_S)
    # not before that much of B was heard, and no later than one more window and a chunk
    assert 4.0 + (new_speaker_frames - 16) * FRAME_S <= changes[1].detected_at
    assert changes[1].detected_at <= 4.0 + (windows + 1) * 16 * FRAME_S + CHUNK * FRAME_S


def test_odd_windows_inside_a_turn_found_no_speaker():
    a, b, c, d = voices(4, seed=3)
    cfg = SpeakerTurnConfig(change_frames=24, new_speaker_frames=48)  # 1.5 and 3 windows
    # two windows of another voice inside A's speech: more than change_frames, less than
    # new_speaker_frames: pending, then forgotten when A is heard again
    frames, _ = frames_of([(a, 48), (b, 32), (a, 48)])
    tracker = SpeakerTracker(mean_embed, FRAME_S, cfg)
    assert [c.speaker for c in run(tracker, frames, None)] == ["S1"] and len(tracker.clusters) == 1
    # three odd windows (new_speaker_frames of speech) that do not agree with one another: each
    # ends the run before it, so none founds a speaker
    frames, _ = frames_of([(a, 48), (b, 16), (c, 16), (d, 16), (a, 48)])
    tracker = SpeakerTracker(mean_embed, FRAME_S, cfg)
    assert [c.speaker for c in run(tracker, frames, None)] == ["S1"] and len(tracker.clusters) == 1
    # the same three windows of one voice do found one
    frames, _ = frames_of([(a, 48), (b, 48), (a, 48)])
    assert [c.speaker for c in run(SpeakerTracker(mean_embed, FRAME_S, cfg), frames, None)] == ["S1", "S2", "S1"]


def test_a_short_burst_at_a_pause_goes_to_a_known_speaker():
    a, b = voices(2, seed=3)
    # a short new voice up to a pause: too little to found a speaker; the nearest known keeps it
    frames, speech = frames_of([(a, 48), (None, 16), (b, 16), (None, 16), (a, 48)])
    assert [c.speaker for c in run(SpeakerTracker(mean_embed, FRAME_S), frames, speech)] == ["S1"]
    # with new_speaker_frames of one window it is a turn of its own
    short = SpeakerTurnConfig(change_frames=16, new_speaker_frames=16)
    changes = run(SpeakerTracker(mean_embed, FRAME_S, short), frames, speech)
    assert [c.speaker for c in changes] == ["S1", "S2", "S1"]
    assert changes[1].start == pytest.approx(64 * FRAME_S)
    # a short reply of a voice heard before is a turn at its pause, whatever its length
    frames, speech = frames_of([(a, 64), (None, 16), (b, 64), (None, 16), (a, 32), (None, 16), (b, 16), (None, 16)])
    changes = run(SpeakerTracker(mean_embed, FRAME_S), frames, speech)
    assert [c.speaker for c in changes] == ["S1", "S2", "S1", "S2"]
    assert changes[3].start == pytest.approx((64 + 16 + 64 + 16 + 32 + 16) * FRAME_S)


def _between(a: np.ndarray, b: np.ndarray, towards_b: float) -> np.ndarray:
    """A unit voice on the arc from a to b, `towards_b` of the way: a window that sounds like both."""
    v = (1 - towards_b) * a + towards_b * b
    return v / np.linalg.norm(v)


def test_one_ambiguous_window_at_a_pause_no_longer_flips_the_label():
    a, b = voices(2, seed=3)
    odd = _between(a, b, 0.55)  # a touch nearer B than A: far from A, within B's cluster distance
    # A, B, A again, then one window that sounds like both up to a pause, then A goes on
    plan = [(a, 64), (None, 16), (b, 64), (None, 16), (a, 48), (None, 16), (odd, 16), (None, 16), (a, 48)]
    frames, speech = frames_of(plan)
    # the old rule (any far window settles at its pause): a false turn to S2 and straight back
    old = run(SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(switch_margin=None)), frames, speech)
    assert [c.speaker for c in old] == ["S1", "S2", "S1", "S2", "S1"]
    # with the margin: the window is not decisive, stays pending past the pause and is forgotten
    # when A is heard again
    tracker = SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(switch_margin=0.2))
    assert [c.speaker for c in run(tracker, frames, speech)] == ["S1", "S2", "S1"]
    assert tracker.speaker_at((64 + 16 + 64 + 16 + 48 + 16 + 8)) == "S1"


def test_an_ambiguous_first_window_of_a_true_turn_is_confirmed_after_the_pause():
    a, b = voices(2, seed=3)
    odd = _between(a, b, 0.55)
    # B's turn begins with one ambiguous window and a pause, then B goes on: the change waits for
    # B's next window, and is still dated at the turn's first window
    plan = [(a, 64), (None, 16), (b, 64), (None, 16), (a, 48), (None, 16), (odd, 16), (None, 16), (b, 48)]
    frames, speech = frames_of(plan)
    changes = run(SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(switch_margin=0.2)), frames, speech)
    assert [c.speaker for c in changes] == ["S1", "S2", "S1", "S2"]
    turn_s = (64 + 16 + 64 + 16 + 48 + 16) * FRAME_S
    assert changes[3].start == pytest.approx(turn_s)
    # confirmed once B's first window after the pause is heard (and its chunk decoded): within 1 s
    after_pause_s = turn_s + (16 + 16) * FRAME_S
    assert after_pause_s < changes[3].detected_at <= after_pause_s + (16 + CHUNK) * FRAME_S


def test_a_change_moves_back_over_the_first_windows_that_sound_like_the_new_voice():
    a, b = voices(2, seed=3)
    b = b - (b @ a) * a  # orthogonal voices, so the windows between them sit where the test says
    b /= np.linalg.norm(b)
    mid = _between(a, b, 0.59)  # 55 degrees from A, 35 from B: within A's cluster distance, nearer B
    # A talks 5.12 s; B's turn begins with two windows that sound like both, then goes on clearly
    frames, _ = frames_of([(a, 128), (mid, 32), (b, 64)])
    cfg = SpeakerTurnConfig(new_speaker_distance=0.5, backdate_windows=0)
    turn_s, clear_s = 128 * FRAME_S, 160 * FRAME_S
    # the old rule: the two windows settle to A, the change is dated at B's first clear window (1.28 s late)
    old = run(SpeakerTracker(mean_embed, FRAME_S, cfg), frames, None)
    assert [c.speaker for c in old] == ["S1", "S2"] and old[1].start == pytest.approx(clear_s)
    # backdated: once S2 has a centroid, both windows are nearer it than A's and join its turn;
    # when the change is sent does not move
    new = run(SpeakerTracker(mean_embed, FRAME_S, dataclasses.replace(cfg, backdate_windows=4)), frames, None)
    assert [c.speaker for c in new] == ["S1", "S2"] and new[1].start == pytest.approx(turn_s)
    assert new[1].detected_at == old[1].detected_at
    # at most backdate_windows windows back; A's own windows (nearer A) never move
    one = run(SpeakerTracker(mean_embed, FRAME_S, dataclasses.replace(cfg, backdate_windows=1)), frames, None)
    assert one[1].start == pytest.approx(turn_s + 16 * FRAME_S)


def test_the_first_voice_is_not_founded_on_one_short_odd_window():
    a, b, odd = voices(3, seed=3)
    # the stream opens with 10 frames unlike A (a cough, a first word whose window is odd), a gap
    # that ends that window, then A, then B: the break after the short window founded S1 on it, so
    # A became S2 and B S3
    frames, speech = frames_of([(odd, 10), (None, 4), (a, 64), (b, 64)])
    old = run(SpeakerTracker(mean_embed, FRAME_S), frames, speech, pauses_end_segments=False)
    assert [c.speaker for c in old] == ["S1", "S2", "S3"]
    # with first_speaker_frames of one whole window the short window is dropped at the break
    tracker = SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(first_speaker_frames=16))
    new = run(tracker, frames, speech, pauses_end_segments=False)
    assert [c.speaker for c in new] == ["S1", "S2"] and len(tracker.clusters) == 2
    assert new[1].start == pytest.approx(78 * FRAME_S, abs=16 * FRAME_S)
    # the same at a pause: the short window stays pending past it (no label yet) and A's first
    # window, unlike it, drops it
    frames, speech = frames_of([(odd, 10), (None, 16), (a, 64), (b, 64)])
    tracker = SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(first_speaker_frames=16))
    new = run(tracker, frames, speech)
    assert [c.speaker for c in new] == ["S1", "S2"] and len(tracker.clusters) == 2
    old = run(SpeakerTracker(mean_embed, FRAME_S), frames, speech)
    assert [c.speaker for c in old] == ["S1", "S2", "S3"]


def test_a_short_first_utterance_of_the_first_voice_still_opens_its_turn():
    a, b = voices(2, seed=3)
    # A says 10 frames, pauses, goes on, then B: the same two turns with and without the rule
    frames, speech = frames_of([(a, 10), (None, 16), (a, 64), (b, 64)])
    old = run(SpeakerTracker(mean_embed, FRAME_S), frames, speech)
    tracker = SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(first_speaker_frames=16))
    pending = []  # what a client has been sent by the pause after A's short utterance
    for t0 in range(0, 24, CHUNK):  # A's 10 frames and part of the pause
        tracker.push(frames[t0 : t0 + CHUNK], speech[t0 : t0 + CHUNK], t0)
    tracker.end_segment()
    pending += tracker.changes()
    assert pending == [] and tracker.current is None  # a final here is sent without a speaker
    new = run(SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(first_speaker_frames=16)), frames, speech)
    assert [(c.speaker, c.previous) for c in new] == [(c.speaker, c.previous) for c in old] == [("S1", None),
                                                                                                 ("S2", "S1")]
    # the short utterance waited past its pause and was founded with A's next window: the turn
    # still starts at the stream's first speech, only it is confirmed later
    assert new[0].start == old[0].start == 0.0 and new[0].detected_at > old[0].detected_at
    assert new[1].start == old[1].start


def test_non_speech_frames_are_not_pooled():
    a, b = voices(2, seed=5)
    frames, _ = frames_of([(a, 40), (b, 60), (a, 40)])
    speech = np.ones(140, dtype=bool)
    speech[40:100] = False  # the VAD says the B frames are not speech: they must not count
    changes = run(SpeakerTracker(mean_embed, FRAME_S), frames, speech, pauses_end_segments=False)
    assert [c.speaker for c in changes] == ["S1"]


def test_a_short_gap_ends_the_window_so_the_change_is_dated_at_the_new_voice():
    a, b = voices(2, seed=11)
    # A, a 0.32 s gap (shorter than a pause: no end_segment), then B: the gap is a turn change
    frames, speech = frames_of([(a, 40), (None, 8), (b, 60)])
    spanning = run(SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(gap_frames=None)), frames, speech,
                   pauses_end_segments=False)
    gapped = SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(gap_frames=5))
    changes = run(gapped, frames, speech, pauses_end_segments=False)
    assert [c.speaker for c in changes] == [c.speaker for c in spanning] == ["S1", "S2"]
    assert changes[1].start == pytest.approx(48 * FRAME_S)  # B's first frame, not A's last window
    assert spanning[1].start != pytest.approx(48 * FRAME_S)  # without: the window spans the gap
    # A's 8 frames before the gap were embedded as a window of their own (6 <= 8 < 16)
    assert gapped.windows_embedded == 2 + 1 + 60 // 16 + 1
    # a rest shorter than min_window_frames before a gap is dropped, not embedded
    frames, speech = frames_of([(a, 19), (None, 8), (a, 16)])
    tracker = SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(gap_frames=5))
    run(tracker, frames, speech, pauses_end_segments=False)
    assert tracker.windows_embedded == 2


def test_enrolled_names_and_an_anonymous_stranger():
    a, b, c = voices(3, seed=7)
    enrolled = check_enrolled({"alice": a.tolist(), "bob": (2.5 * b).tolist()}, DIM)
    frames, _ = frames_of([(b, 50), (c, 50), (a, 50)])
    tracker = SpeakerTracker(mean_embed, FRAME_S, enrolled=enrolled)
    assert [x.speaker for x in run(tracker, frames, None)] == ["bob", "S1", "alice"]
    # with a similarity no embedding reaches, everyone stays anonymous
    strict = SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(enrol_similarity=1.0), enrolled)
    assert [x.speaker for x in run(strict, frames, None)] == ["S1", "S2", "S3"]


def test_clusters_are_capped():
    vs = voices(4, seed=9)
    frames, _ = frames_of([(v, 50) for v in vs])
    tracker = SpeakerTracker(mean_embed, FRAME_S, SpeakerTurnConfig(max_speakers=2))
    labels = {x.speaker for x in run(tracker, frames, None)}
    assert labels <= {"S1", "S2"} and len([c for c in tracker.clusters]) == 2


def test_final_words_get_the_speaker_of_their_turn():
    a, b = voices(2, seed=11)
    frames, _ = frames_of([(a, 75), (b, 75)])
    tracker = SpeakerTracker(mean_embed, FRAME_S)
    run(tracker, frames, None)
    words = (Word("one", 2.0, 2.4, 1.0), Word("two", 2.5, 2.8, 1.0), Word("three", 3.9, 4.4, 1.0))
    final = label_final(FinalEvent("one two three", 2.0, 4.4, words, (), "eos", 6.0), tracker)
    assert final.word_speakers == ("S1", "S1", "S2") and final.speaker == "S1"  # 0.7 s of S1, 0.5 s of S2
    assert label_final(FinalEvent("", 0, 0, (), (), "eos", 0), SpeakerTracker(mean_embed, FRAME_S)).speaker is None


@pytest.mark.parametrize("enrolled, error", [
    ({f"p{i}": [1.0] * DIM for i in range(MAX_ENROLLED + 1)}, "at most"),
    ({"x": [1.0] * (DIM + 1)}, "shape"),
    ({"x": [float("nan")] * DIM}, "NaN"),
    ({"x": [0.0] * DIM}, "norm"),
    ({"x": [1e308] * DIM}, "norm"),
])
def test_hostile_enrolment_is_refused_with_the_reason(enrolled, error):
    with pytest.raises(ValueError, match=error):
        check_enrolled(enrolled, DIM)


def test_config_is_checked():
    with pytest.raises(ValueError, match="window_frames"):
        SpeakerTurnConfig(window_frames=0)
    with pytest.raises(ValueError, match="change_distance"):
        SpeakerTurnConfig(change_distance=2.5)
    with pytest.raises(ValueError, match="gap_frames=0"):
        SpeakerTurnConfig(gap_frames=0)
    with pytest.raises(ValueError, match="new_speaker_frames=16 is below change_frames=24"):
        SpeakerTurnConfig(new_speaker_frames=16)
    with pytest.raises(ValueError, match="switch_margin=-0.1"):
        SpeakerTurnConfig(switch_margin=-0.1)
    assert SpeakerTurnConfig(switch_margin=None).switch_margin is None
    with pytest.raises(ValueError, match="backdate_windows=-1"):
        SpeakerTurnConfig(backdate_windows=-1)
    with pytest.raises(ValueError, match="backdate_windows=9: expected 0 to 8"):
        SpeakerTurnConfig(backdate_windows=9)
    with pytest.raises(ValueError, match="first_speaker_frames=0"):
        SpeakerTurnConfig(first_speaker_frames=0)
    with pytest.raises(ValueError, match="first_speaker_frames=33: expected None or 1 to new_speaker_frames=32"):
        SpeakerTurnConfig(first_speaker_frames=33)


# ----------------------------------------------------------------------------- through the recognizer


def scripted(rec: StreamingRecognizer, speech: np.ndarray, voices: np.ndarray) -> StreamingRecognizer:
    rec.vad, rec.speaker = ScriptedVAD(speech), ScriptedSpeaker(voices)
    return rec


def test_recognizer_streams_speaker_turns_and_labels_finals():
    audio, speech, voices = conversation([(0, 3.0), (None, 1.5), (1, 3.0), (None, 1.5), (0, 2.0), (None, 1.5)])
    rec = scripted(tiny_recognizer(), speech, voices)
    s = rec.new_stream(speaker_turns=TurnConfig())
    rec.accept(s, audio)
    while rec.ready(s):
        rec.step([s])
    rec.finish(s)
    events = rec.events(s)
    changes = [e for e in events if isinstance(e, SpeakerChangeEvent)]
    assert [(c.speaker, c.previous) for c in changes] == [("S1", None), ("S2", "S1"), ("S1", "S2")]
    assert [c.start for c in changes] == pytest.approx([0.0, 4.5, 9.0], abs=FRAME_S)
    finals = [e for e in events if isinstance(e, FinalEvent)]
    assert finals and all(f.speaker in ("S1", "S2") and len(f.word_speakers) == len(f.words) for f in finals)
    for f in finals:  # each utterance lies inside one voice's turn here
        mid = (f.start + f.end) / 2
        assert f.speaker == ("S2" if 4.5 <= mid < 7.5 else "S1"), (f.start, f.end, f.speaker)
    # a stream that did not ask gets no speaker fields, and no speaker head runs for it
    plain = scripted(tiny_recognizer(), speech, voices)
    t = plain.new_stream()
    assert "speaker" not in plain._roles([t])
    assert all(f.speaker is None for f in plain.transcribe(audio))


def test_speaker_turns_need_a_speaker_head_and_sound_enrolment():
    rec = tiny_recognizer()
    with pytest.raises(ValueError, match="speaker-embedding task"):
        rec.new_stream(speaker_turns=TurnConfig())
    rec.speaker = ScriptedSpeaker(np.zeros((10, DIM)))
    with pytest.raises(ValueError, match="shape"):
        rec.new_stream(speaker_turns=TurnConfig(), enrolled={"ann": [1.0, 2.0]})


def test_a_real_speaker_head_streams_through_the_traced_step():
    """A (random) speaker task: the traced step outputs the frames it pools, equal to the eager
    step's, and a stream with speaker turns runs on it (labels mean nothing for a random head)."""
    from mtspeech.streaming.encoder import TorchEncoderStep
    from mtspeech.streaming.traced import TracedEncoderStep
    from mtspeech.tasks.speaker import SpeakerConfig, SpeakerTask
    from tiny_asr import CHUNK as C, LEFT, PieceTable, signal, tiny_model
    from mtspeech.streaming import StreamingConfig

    model = tiny_model()
    del model.tasks["vad"]  # a random VAD may call nothing speech; without one every frame is
    model.tasks["speaker"] = SpeakerTask(SpeakerConfig(embed_dim=12), 32, {"speakers": ["a", "b"]}).eval()
    traced, eager = TracedEncoderStep(model, C, LEFT), TorchEncoderStep(model, C, LEFT)
    assert "speaker" in traced.graph_roles
    window, _ = model.geometry.chunk_window(C)
    feats = torch.randn(2, window, 80)
    got, _ = traced(feats, traced.init_cache(2), ("asr", "speaker"))
    want, _ = eager(feats, eager.init_cache(2), ("asr", "speaker"))
    assert got.logits["speaker"].shape == (2, C, 32)
    torch.testing.assert_close(got.logits["speaker"], want.logits["speaker"], atol=1e-4, rtol=1e-4)

    rec = StreamingRecognizer(model, PieceTable(), StreamingConfig(chunk_frames=C, left_chunks=LEFT),
                              encoder_step=traced)
    assert rec.speaker.embed_dim == 12
    s = rec.new_stream(speaker_turns=TurnConfig(window_frames=4, min_window_frames=2))
    rec.accept(s, signal(3.0))
    rec.finish(s)
    changes = [e for e in rec.events(s) if isinstance(e, SpeakerChangeEvent)]
    assert changes and changes[0].speaker == "S1" and changes[0].previous is None


@pytest.mark.slow  # an ONNX export: about 20 s on 2 cores
def test_an_onnx_export_carries_the_speaker_frames(tmp_path):
    from mtspeech.export.onnx import export_onnx
    from mtspeech.export.runtime import OnnxEncoderStep
    from mtspeech.streaming.encoder import TorchEncoderStep
    from mtspeech.tasks.speaker import SpeakerConfig, SpeakerTask
    from tiny_asr import CHUNK as C, LEFT, tiny_model

    model = tiny_model()
    model.tasks["speaker"] = SpeakerTask(SpeakerConfig(embed_dim=12), 32, {"speakers": ["a", "b"]}).eval()
    info = export_onnx(model, tmp_path, C, LEFT)
    assert info.roles == ("asr", "vad", "speaker") and "speaker_logits" in info.outputs
    onnx, eager = OnnxEncoderStep(tmp_path), TorchEncoderStep(model, C, LEFT)
    window, _ = model.geometry.chunk_window(C)
    feats = torch.randn(1, window, 80)
    got, _ = onnx(feats, onnx.init_cache(1), ("asr", "speaker"))
    want, _ = eager(feats, eager.init_cache(1), ("asr", "speaker"))
    torch.testing.assert_close(got.logits["speaker"], want.logits["speaker"], atol=1e-4, rtol=1e-4)
