"""Noisy twins of the test splits: same ids, texts and segments; the requested SNR; each kind."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import soundfile

from mtspeech.data.librispeech import prepare_librispeech, read_segments_txt
from mtspeech.data.manifest import read_manifest
from mtspeech.data.noisy_twins import make_noisy_twins


@pytest.fixture(scope="module")
def twins(synth_corpus, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("twins") / "corpus"
    shutil.copytree(synth_corpus, corpus)
    summary = make_noisy_twins(corpus, splits=("test",), snrs_db=(10.0,), seed=3, progress=False)
    return corpus, summary


def test_twins_keep_ids_texts_and_segments_and_hit_the_snr(twins):
    corpus, summary = twins
    assert set(summary) == {"test-snr10", "test-room"}
    clean_files = sorted((corpus / "test").rglob("*.flac"))
    noisy_files = sorted((corpus / "test-snr10").rglob("*.flac"))
    assert [f.relative_to(corpus / "test") for f in clean_files] == \
        [f.relative_to(corpus / "test-snr10") for f in noisy_files]
    assert sum(summary["test-snr10"].values()) == len(clean_files)
    if len(clean_files) >= 4:
        assert all(n > 0 for n in summary["test-snr10"].values())
    segments = {}
    for sidecar in (corpus / "test").rglob("*.segments.txt"):
        segments.update(read_segments_txt(sidecar, []))
    for clean_path, noisy_path in zip(clean_files, noisy_files):
        clean, rate = soundfile.read(clean_path)
        noisy, _ = soundfile.read(noisy_path)
        assert len(clean) == len(noisy)
        mask = np.zeros(len(clean), bool)
        for a, b in segments[clean_path.stem]:
            mask[int(a * rate): int(b * rate)] = True
        snr = 10 * math.log10(np.mean(clean[mask] ** 2) / np.mean((noisy - clean) ** 2))
        assert snr == pytest.approx(10.0, abs=0.5)  # 16-bit rounding and rare clipping


def test_twins_prepare_into_manifests_with_the_clean_labels(twins, tmp_path):
    corpus, _ = twins
    summary = prepare_librispeech(corpus, tmp_path, oov="g2p", jobs=1, progress=False)
    assert "test-snr10" in summary["splits"]
    clean = {u.id: u for u in read_manifest(tmp_path / "test.jsonl")}
    noisy = read_manifest(tmp_path / "test-snr10.jsonl")
    assert {u.id for u in noisy} == set(clean)
    for u in noisy:
        c = clean[u.id]
        assert (u.text, u.speaker, u.phones, u.speech) == (c.text, c.speaker, c.phones, c.speech)
        assert u.audio != c.audio


def test_room_twin_keeps_labels_and_length_and_is_reverberant_and_seeded(twins, tmp_path):
    """test-room: every utterance through a room (RT60 0.3-0.9 s), same length and sidecars; the
    energy after the last speech segment is the room's tail, absent from the clean audio."""
    from mtspeech.data.noisy_twins import ROOM_RT60_S, make_room_twin

    corpus, summary = twins
    room = summary["test-room"]
    clean_files = sorted((corpus / "test").rglob("*.flac"))
    assert room["utterances"] == len(clean_files)
    assert ROOM_RT60_S[0] <= room["rt60_s"][0] <= room["rt60_s"][1] <= ROOM_RT60_S[1]
    for name in ("trans.txt", "segments.txt"):
        for sidecar in (corpus / "test").rglob(f"*.{name}"):
            assert (corpus / "test-room" / sidecar.relative_to(corpus / "test")).read_text() == sidecar.read_text()
    segments = {}
    for sidecar in (corpus / "test").rglob("*.segments.txt"):
        segments.update(read_segments_txt(sidecar, []))
    for path in clean_files:
        clean, rate = soundfile.read(path)
        wet, _ = soundfile.read(corpus / "test-room" / path.relative_to(corpus / "test"))
        assert len(wet) == len(clean) and not np.allclose(wet, clean, atol=1e-3)
        end = int(segments[path.stem][-1][1] * rate)
        after = slice(end + int(0.02 * rate), end + int(0.1 * rate))  # 20-100 ms after speech stops
        assert np.mean(wet[after] ** 2) > 10 * np.mean(clean[after] ** 2) + 1e-9
    again = tmp_path / "again"
    shutil.copytree(corpus / "test", again / "test")
    assert make_room_twin(again, "test", seed=3, progress=False) == room
    for path in clean_files:
        rel = path.relative_to(corpus / "test")
        assert (again / "test-room" / rel).read_bytes() == (corpus / "test-room" / rel).read_bytes()
