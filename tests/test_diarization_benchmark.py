"""benchmarks/diarization.py: the conversation builder, the pyannote sample reader, and the
record → replay → DER path on a stream whose speaker and VAD heads are scripted.

What this proves, and what not: the session's tiny model is random, and a random speaker head
cannot tell voices apart (tests/serve/test_speaker_turns.py says the same), so the two-voice
check here scripts the heads (`tests/tiny_asr.py`) and proves the benchmark's plumbing: the
served events, the hypothesis drawn from them, DER and the change matching. Whether a trained
model separates voices is what the benchmark's committed JSON reports (docs/results/diarization/).
"""

from __future__ import annotations

import io
import subprocess
import zipfile

import numpy as np
import pytest
import soundfile
from bench_module import load_benchmark
from tiny_asr import ScriptedSpeaker, ScriptedVAD, conversation, tiny_recognizer

from mtspeech.streaming.stream import SpeakerChangeEvent

conversations = load_benchmark("_diarization_conversations")
scoring = load_benchmark("_diarization_scoring")
recordings = load_benchmark("_diarization_recordings")
RATE = 16000


def test_conversations_are_seeded_and_keep_their_shape(prepared_manifests):
    shape = conversations.ConversationShape(speakers=(2, 2), turn_s=(1.0, 3.0), overlap_prob=1.0,
                                            overlap_s=(0.2, 0.4), turns=4)
    manifest = [prepared_manifests["test-unseen"]]
    a = conversations.build_conversations(manifest, 2, seed=7, sample_rate=RATE, shape=shape)
    b = conversations.build_conversations(manifest, 2, seed=7, sample_rate=RATE, shape=shape)
    assert [c.turns for c in a] == [c.turns for c in b] and all(np.array_equal(x.audio, y.audio) for x, y in zip(a, b))
    for c in a:
        assert len(c.turns) == 4 and len(c.speakers) == 2
        for prev, turn in zip(c.turns, c.turns[1:]):
            assert turn.speaker != prev.speaker
            assert prev.start < turn.start < prev.end < turn.end  # every turn overlaps the last, never inside it
        assert all(t.end - t.start <= 3.0 + 1e-6 for t in c.turns)
        assert c.changes() == [t.start for t in c.turns[1:]]
        assert c.seconds >= c.turns[-1].end
        overlap = sum(max(0.0, p.end - t.start) for p, t in zip(c.turns, c.turns[1:]))
        speech = sum(e - s for t in c.turns for s, e in t.speech)
        assert c.reference().get_timeline().support().duration() == pytest.approx(speech - overlap, abs=0.05)


def test_too_few_speakers_is_a_clear_error(prepared_manifests):
    with pytest.raises(ValueError, match="speakers, conversations need up to 4"):
        conversations.build_conversations([prepared_manifests["test-unseen"]], 1, 0, RATE)


def _fake_wheel(path, rttm: str):
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(RATE, dtype=np.float32), RATE, format="WAV", subtype="PCM_16")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(conversations.SAMPLE_WAV, buf.getvalue())
        z.writestr(conversations.SAMPLE_RTTM, rttm)


def test_pyannote_sample_reads_the_wheel_and_skips_back_channels(tmp_path):
    wheel = tmp_path / "pyannote_audio-4.0.7-py3-none-any.whl"
    _fake_wheel(wheel, "SPEAKER sample 1 0.1 0.3 <NA> <NA> a <NA> <NA>\n"
                       "SPEAKER sample 1 0.45 0.4 <NA> <NA> b <NA> <NA>\n"
                       "SPEAKER sample 1 0.5 0.1 <NA> <NA> a <NA> <NA>\n")  # a's back-channel inside b's turn
    c = conversations.pyannote_sample(wheel, RATE)
    assert c.seconds == 1.0 and c.speakers == ["a", "b"] and c.changes() == [0.45]
    assert conversations.pyannote_wheel(tmp_path) == wheel  # cached: no download


def test_pyannote_wheel_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no network"))
    with pytest.raises(RuntimeError, match="no-pyannote-sample"):
        conversations.pyannote_wheel(tmp_path / "cache")
    _fake_wheel(tmp_path / "other.whl", "")
    with pytest.raises(ValueError, match="no SPEAKER line"):
        conversations.pyannote_sample(tmp_path / "other.whl", RATE)


def test_two_scripted_voices_get_two_labels_and_the_change_within_a_second():
    turns = [(0, 3.0), (None, 1.5), (1, 3.0), (None, 1.5)]  # voice 1 starts at 4.5 s
    audio, speech, voices = conversation(turns)
    rec = tiny_recognizer()
    rec.vad, rec.speaker = ScriptedVAD(speech), ScriptedSpeaker(voices)
    conv = conversations.Conversation("scripted", audio, RATE, (
        conversations.Turn("x", ((0.0, 3.0),)), conversations.Turn("y", ((4.5, 7.5),))))
    r = scoring.record(rec, conv)  # raises if replaying the record differs from the served events
    s = scoring.score(r, r.live_events, tolerance_s=1.0)
    assert s["labels"] == 2 and s["found"] == s["true_changes"] == 1 and s["false_changes"] == 0
    assert abs(s["start_error_s"][0]) <= 1.0 and s["latency_s"][0] > 0
    assert s["der"] < 0.05  # frames are 40 ms, the collar 0.25 s: nearly all of it is right
    assert scoring.two_labels_in_time([s])["passed"] == 1
    # the same record with thresholds that merge everything: one label, a missed change, confusion
    merged = scoring.score(r, scoring.replay(r, "head", scoring.turn_config(1.9, 1.9)), 1.0)
    assert merged["labels"] == 1 and merged["found"] == 0 and merged["der"] > 0.3


def test_saved_recordings_replay_without_decoding_and_a_new_key_records_again(tmp_path):
    turns = [(0, 3.0), (None, 1.5), (1, 3.0), (None, 1.5)]
    audio, speech, voices = conversation(turns)
    rec = tiny_recognizer()
    rec.vad, rec.speaker = ScriptedVAD(speech), ScriptedSpeaker(voices)
    conv = conversations.Conversation("scripted", audio, RATE, (
        conversations.Turn("x", ((0.0, 3.0),)), conversations.Turn("y", ((4.5, 7.5),))))
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    key = recordings.recording_key(model, seed=0)
    first = recordings.load_or_record(tmp_path / "rec", "set", key, [conv], rec, None)
    assert (tmp_path / "rec" / "set.pt").is_file()
    rec.step = None  # nothing may decode now: a read-back recording replays from the file
    again = recordings.load_or_record(tmp_path / "rec", "set", key, [conv], rec, None)
    assert again[0].live_events == first[0].live_events and len(again[0].calls) == len(first[0].calls)
    cfg = scoring.turn_config(0.3, 0.4, 3)
    assert scoring.replay(again[0], "head", cfg) == scoring.replay(first[0], "head", cfg)
    # another key (another seed, or a retrained model) is not read back: it records again
    with pytest.raises(TypeError):
        recordings.load_or_record(tmp_path / "rec", "set", recordings.recording_key(model, seed=1), [conv], rec, None)
    other = conversations.Conversation("other", audio, RATE, conv.turns)
    with pytest.raises(ValueError, match="does not match conversation other"):
        recordings.load_or_record(tmp_path / "rec", "set", key, [other], rec, None)


def test_change_matching_is_one_to_one_within_the_tolerance():
    ev = lambda start, prev="S1": SpeakerChangeEvent("S2", prev, start, start + 1.0)  # noqa: E731
    events = [ev(0.0, None), ev(2.1), ev(2.3), ev(9.0)]
    matched, false = scoring.match_changes([2.0, 5.0], events, tolerance_s=1.0)
    assert [(t, e.start) for t, e in matched] == [(2.0, 2.1)] and false == 2  # 2.3 and 9.0 unmatched


def test_summary_pools_seconds_over_conversations():
    one = {"id": "a", "seconds": 60.0, "total_ms": 1000, "error_ms": 100, "missed_ms": 100, "false_alarm_ms": 0,
           "confusion_ms": 0, "true_changes": 2, "found": 1, "false_changes": 1, "latency_s": [1.0],
           "start_error_s": [0.1]}
    two = dict(one, id="b", total_ms=3000, error_ms=900, missed_ms=0, confusion_ms=900, found=2, latency_s=[2.0, 3.0])
    s = scoring.summarise([one, two])
    assert s["der"] == pytest.approx(0.25) and s["confusion"] == pytest.approx(0.225)
    assert s["found"] == pytest.approx(0.75) and s["latency_median_s"] == 2.0 and s["false_changes_per_min"] == 1.0
    assert s["der_ci"][0] <= 0.25 <= s["der_ci"][1]


def test_the_choice_does_not_buy_a_two_voice_pass_with_der():
    rows = [["merges voices", 0.22, 10], ["best", 0.085, 9], ["near", 0.09, 9], ["fewer", 0.086, 8]]
    assert scoring.pick(rows, None)[0] == "merges voices"  # the most passes, whatever its DER
    assert scoring.pick(rows, 0.01)[0] == "best"  # only within a point of the lowest DER
    assert scoring.pick(rows, 0.1)[0] == "best"  # the merging row is 13.5 points above: still out
    assert scoring.pick(rows, 0.14)[0] == "merges voices"


def test_a_tune_only_run_renders_what_each_rule_did_on_dev():
    bench = load_benchmark("diarization")
    # rows: [cd, nd, gap, new-speaker frames, margin, backdate, first-speaker frames, DER, passed]
    grid = [[0.1, 0.4, 3, 32, 0.2, 4, None, 0.085, 9], [0.1, 0.4, 3, 32, 0.2, 4, 16, 0.094, 9],
            [0.2, 0.4, 3, 32, 0.2, 4, 16, 0.3, 10]]  # 10 passes, but far past the slack
    tuning = {"head": {"chosen": grid[0][:7], "der": 0.085, "acceptance_passed": 9, "acceptance_conversations": 10,
                       "der_slack": 0.01, "grid": grid}}
    r = {"tune_only": True, "model": "m.pt", "commit": "abc", "backend": "torch", "chunk_frames": 8,
         "window_frames": 16, "seed": 0, "tune_splits": "dev", "conversations": {"tune": 20, "tune-acceptance": 10},
         "tuning": tuning, "served_setting": grid[0][:7]}
    text = bench.render(r)
    assert "no held-out conversation scored" in text
    assert "dev, head: chosen 9 of 10 two-voice passed, DER 8.5 %" in text and "served defaults 9 passed" in text
    assert "head, first-speaker frames off: 9 passed, DER 8.5 % at 0.1, 0.4, 3, 32, 0.2, 4, off" in text
    assert "head, first-speaker frames 16: 9 passed, DER 9.4 % at 0.1, 0.4, 3, 32, 0.2, 4, 16" in text
    assert "head, gap frames" not in text  # an axis tried with one value says nothing


def test_a_trimmed_dev_grid_renders_as_the_whole_one():
    # --grid-keep drops the settings far from the lowest dev DER; the page must not change.
    bench = load_benchmark("diarization")
    grid = [[0.1, 0.4, 3, 32, 0.2, 4, None, 0.085, 9], [0.1, 0.4, 3, 32, 0.2, 4, 16, 0.094, 9],
            [0.2, 0.4, 3, 32, 0.2, 4, None, 0.3, 10], [0.2, 0.4, 5, 32, 0.2, 4, 16, 0.5, 2],
            [0.1, 0.4, 5, 32, 0.2, 4, None, 0.6, 1]]
    served = grid[4][:7]  # far from the lowest, but the page quotes it
    t = {"chosen": grid[0][:7], "der": 0.085, "acceptance_passed": 9, "acceptance_conversations": 10,
         "der_slack": 0.01, "grid": grid}
    r = {"tune_only": True, "model": "m.pt", "commit": "abc", "backend": "torch", "chunk_frames": 8,
         "window_frames": 16, "seed": 0, "tune_splits": "dev", "conversations": {"tune": 20, "tune-acceptance": 10},
         "tuning": {"head": t}, "served_setting": served}
    trimmed = bench.trim_grid(t, 0.05, served)
    assert [row[-2] for row in trimmed["grid"]] == [0.085, 0.094, 0.6]
    assert trimmed["settings_searched"] == 5 and trimmed["axis_values"][2] == [3, 5]
    assert bench.render({**r, "tuning": {"head": trimmed}}) == bench.render(r)
    assert "gap frames 5: no setting within the slack" in bench.render(r)


def test_tuning_jobs_run_in_forked_processes_and_keep_their_order():
    bench = load_benchmark("diarization")
    offset = 10  # a closure, as the recordings' embedders are: it does not pickle, a forked worker has it
    jobs = [(lambda x: x + offset, (1,)), (pow, (2, 3)), (lambda: __import__("os").getpid(), ())]
    first, second, pid = bench._in_parallel(jobs)
    assert (first, second) == (11, 8) and pid != __import__("os").getpid()
    assert bench._in_parallel(jobs[:1]) == [11] and not bench._JOBS


@pytest.mark.slow  # builds a random checkpoint and loads Resemblyzer: ~20 s on two shared cores
def test_the_benchmark_runs_end_to_end_on_a_random_model(prepared_manifests):
    """Every headline number present (a random model's values mean nothing). Without the peer:
    Resemblyzer is in the optional `peers` extra, which the test set-up does not install."""
    bench = load_benchmark("diarization")
    r = bench.main(["--random-model", "--data", str(prepared_manifests["dev"].parent), "--test-splits", "test-unseen",
                    "--speakers", "2,2", "--tune-conversations", "1", "--conversations", "2", "--acceptance", "1",
                    "--tune-acceptance", "1", "--seconds", "4", "--grid", "0.3,0.6", "--gaps", "none,3",
                    "--new-speaker-frames", "16,24,48", "--switch-margins", "none,0.2", "--backdate-windows", "0,2",
                    "--first-speaker-frames", "none,16", "--no-pyannote-sample", "--no-peer"])
    assert r["conversations"] == {"tune": 1, "tune-acceptance": 1, "test": 2, "acceptance": 1}
    assert set(r["results"]) == {"head (served defaults)", "head (tuned)"}
    for x in r["results"].values():
        assert 0.0 <= x["test"]["der"] and len(x["per_conversation"]) == 2
    # 16 new-speaker frames are below change_frames (24): skipped, not an error
    assert len(r["tuning"]["head"]["grid"]) == 128 and r["peer_delta"] is None
    assert {row[4] for row in r["tuning"]["head"]["grid"]} == {None, 0.2}
    assert {row[5] for row in r["tuning"]["head"]["grid"]} == {0, 2}
    assert {row[6] for row in r["tuning"]["head"]["grid"]} == {None, 16}
    served = r["results"]["head (served defaults)"]
    assert served["switch_margin"] == scoring.DEFAULT.switch_margin
    assert served["backdate_windows"] == scoring.DEFAULT.backdate_windows
    assert served["first_speaker_frames"] == scoring.DEFAULT.first_speaker_frames
    assert "resemblyzer" not in r["versions"]
    text = bench.render(r)
    assert "| head (tuned) |" in text and ", switch margin, backdate windows, first-speaker frames |" in text
    # stopped after the dev choice: no held-out set is built, the same choice is made
    dev = bench.main(["--random-model", "--data", str(prepared_manifests["dev"].parent), "--test-splits", "test-unseen",
                      "--speakers", "2,2", "--tune-conversations", "1", "--tune-acceptance", "1", "--seconds", "4",
                      "--grid", "0.3,0.6", "--gaps", "none,3", "--new-speaker-frames", "16,24,48", "--switch-margins",
                      "none,0.2", "--backdate-windows", "0,2", "--first-speaker-frames", "none,16", "--tune-only",
                      "--no-peer"])
    assert dev["conversations"] == {"tune": 1, "tune-acceptance": 1} and "results" not in dev
    assert dev["tuning"]["head"]["grid"] == r["tuning"]["head"]["grid"]
    assert "first-speaker frames 16:" in bench.render(dev)
