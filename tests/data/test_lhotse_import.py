"""`prepare lhotse`: a CutSet built from the session corpus round-trips into our manifest,
the dataset loads it, and cuts a manifest cannot hold are counted and skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import AudioSource, CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment
from lhotse.utils import fastcopy

from mtspeech.data.dataset import UtteranceDataset, collate_batch
from mtspeech.data.lhotse_import import import_cuts
from mtspeech.data.manifest import read_manifest
from mtspeech.tasks.vad import VADConfig, VADTask


def utterance_cut(u, recording: Recording | None = None) -> MonoCut:
    """A whole-file cut of manifest utterance `u`, one supervision per speech segment (the
    words dealt out over them, the first in lower case with punctuation to be normalised)."""
    rec = recording or Recording.from_file(u.audio, recording_id=u.id)
    words = u.text.split()
    chunks = np.array_split(np.array(words, dtype=object), len(u.speech))
    sups = []
    for i, ((start, end), chunk) in enumerate(zip(u.speech, chunks)):
        text = " ".join(chunk)
        sups.append(SupervisionSegment(
            id=f"{u.id}-{i}", recording_id=rec.id, start=start, duration=end - start, channel=0,
            text=(text.lower() + ",") if i == 0 else text, speaker=u.speaker, gender=u.sex.lower()))
    return MonoCut(id=u.id, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=sups)


def test_cutset_round_trips_and_loads_as_a_batch(prepared_manifests, tmp_path):
    from mtspeech.cli import main

    utts = read_manifest(prepared_manifests["dev"]) + read_manifest(prepared_manifests["test"])
    cuts_path = tmp_path / "cuts_dev.jsonl.gz"
    CutSet.from_cuts(utterance_cut(u) for u in utts).to_file(cuts_path)

    out = tmp_path / "manifests"
    assert main(["prepare", "lhotse", str(cuts_path), str(out), "--split", "dev", "--no-progress"]) == 0
    got = read_manifest(out / "dev.jsonl")
    assert [u.id for u in got] == [u.id for u in utts]
    for a, b in zip(got, utts):
        assert Path(a.audio).resolve() == Path(b.audio).resolve() and a.duration == pytest.approx(b.duration, abs=1e-4)
        assert (a.text, a.speaker, a.sex, a.phones) == (b.text, b.speaker, b.sex, b.phones)
        assert np.allclose(a.speech, b.speech, atol=1e-4)
    summary = json.loads((out / "dev.summary.json").read_text())
    assert summary["utterances"] == len(utts) and summary["rejected"] == {}
    assert (out / "dev.rejected.txt").read_text() == ""

    # the dataset reads it like the librispeech manifest: same audio, same VAD frame labels
    tasks = {"vad": VADTask(VADConfig(), 32, {})}
    mine, theirs = (collate_batch([UtteranceDataset(us, tasks, train=False)[i] for i in range(4)])
                    for us in (got, utts))
    assert mine.ids == theirs.ids and torch.equal(mine.wav, theirs.wav)
    assert torch.equal(mine.targets["vad"].values, theirs.targets["vad"].values)
    assert mine.targets["vad"].values.sum() > 0


def test_cuts_a_manifest_cannot_hold_are_counted_and_skipped(prepared_manifests, tmp_path):
    utts = read_manifest(prepared_manifests["dev"])[:2]
    good, other = utterance_cut(utts[0]), utterance_cut(utts[1])
    stereo_path = tmp_path / "stereo.wav"
    sf.write(stereo_path, np.zeros((1600, 2), dtype=np.float32), 16000)
    stereo = Recording.from_file(stereo_path, recording_id="stereo")
    gone = Recording(id="gone", sources=[AudioSource("file", [0], str(tmp_path / "gone.flac"))],
                     sampling_rate=16000, num_samples=16000, duration=1.0)
    piped = fastcopy(good.recording, sources=[AudioSource("command", [0], f"sox {good.recording.sources[0].source} "
                                                                          "-t wav - |")])
    cuts = [
        good,
        fastcopy(other.resample(8000), id="resampled"),            # imported: the loader resamples
        fastcopy(other, id="overlap", supervisions=[               # imported, labels masked
            SupervisionSegment("a", other.recording_id, 0.0, 0.3, text="HELLO", speaker="A"),
            SupervisionSegment("b", other.recording_id, 0.2, 0.3, text=None, speaker="B")]),
        good,                                                      # duplicate_id
        fastcopy(good.truncate(offset=0.2), id="slice"),           # slice
        fastcopy(good.pad(duration=good.duration + 1.0), id="padded"),   # not_mono (MixedCut)
        fastcopy(good, id="silent", supervisions=[]),              # no_supervision
        fastcopy(good.perturb_speed(1.1), id="fast"),              # transformed
        fastcopy(good, id="piped", recording=piped),              # not_a_file (a Kaldi-style pipe)
        MonoCut("stereo", 0.0, stereo.duration, 0, recording=stereo,
                supervisions=[SupervisionSegment("s", "stereo", 0.0, 0.1, text="HI")]),  # multi_channel
        MonoCut("gone", 0.0, 1.0, 0, recording=gone,
                supervisions=[SupervisionSegment("g", "gone", 0.0, 1.0, text="HI")]),    # missing_audio
    ]
    cuts_path = tmp_path / "mixed.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(cuts_path)
    summary = import_cuts(cuts_path, tmp_path / "out", oov="missing", progress=False)
    assert summary["split"] == "mixed" and summary["utterances"] == 3
    assert summary["rejected"] == {"duplicate_id": 1, "slice": 1, "not_mono": 1, "no_supervision": 1,
                                   "transformed": 1, "not_a_file": 1, "multi_channel": 1, "missing_audio": 1}
    kept = read_manifest(tmp_path / "out" / "mixed.jsonl")
    assert [u.id for u in kept] == [utts[0].id, "resampled", "overlap"]
    # two talkers: one speech span; an untranscribed turn leaves no transcript, not half a one
    assert kept[2].speech == [[0.0, 0.5]] and kept[2].speaker is None and kept[2].text is None
    assert summary["without_text"] == 1 and summary["without_speaker"] == 1
    lines = (tmp_path / "out" / "mixed.rejected.txt").read_text().splitlines()
    assert len(lines) == 8 and all(len(line.split("\t")) == 3 for line in lines)


def test_files_that_are_not_usable_cutsets_are_errors(prepared_manifests, tmp_path):
    u = read_manifest(prepared_manifests["dev"])[0]
    recordings = tmp_path / "recordings.jsonl.gz"
    RecordingSet.from_recordings([Recording.from_file(u.audio, recording_id=u.id)]).to_file(recordings)
    with pytest.raises(ValueError, match="not a cut"):
        import_cuts(recordings, tmp_path / "out", progress=False)
    sliced = tmp_path / "sliced.jsonl.gz"
    CutSet.from_cuts([utterance_cut(u).truncate(offset=0.1)]).to_file(sliced)
    with pytest.raises(ValueError, match=r"no cut could be imported.*slice"):
        import_cuts(sliced, tmp_path / "out", progress=False)
    eager = tmp_path / "cuts.json"
    eager.write_text("[]")
    with pytest.raises(ValueError, match="JSON Lines"):
        import_cuts(eager, tmp_path / "out", progress=False)
