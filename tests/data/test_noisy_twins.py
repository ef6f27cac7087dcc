"""Noisy twins of the test splits: same ids, texts and segments; the requested SNR; each kind.
Room twins reverberate; telephone twins are the telephone channel as the server hears it."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import soundfile

from mtspeech.data.audio import load_audio
from mtspeech.data.librispeech import prepare_librispeech, read_segments_txt
from mtspeech.data.manifest import read_manifest
from mtspeech.data.noisy_twins import make_noisy_twins
from mtspeech.data.resample import StreamResampler
from mtspeech.data.telephone import PHONE_RATE, telephone_channel

RATE = 16000


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


@pytest.fixture(scope="module")
def phone_corpus(synth_corpus, tmp_path_factory):
    from mtspeech.data.noisy_twins import make_phone_twins

    corpus = tmp_path_factory.mktemp("phone") / "corpus"
    shutil.copytree(synth_corpus, corpus)
    return corpus, make_phone_twins(corpus, seed=3, progress=False)


def test_phone_twins_hold_the_clean_labels_at_8_khz(phone_corpus, tmp_path):
    from mtspeech.data.noisy_twins import phone_level_dbov

    corpus, summary = phone_corpus
    assert set(summary) == {"dev-phone", "test-phone"}
    assert phone_level_dbov(3, "dev", 0) != phone_level_dbov(3, "test", 0)  # a stream per split
    splits = ["dev", "dev-phone", "test", "test-phone"]
    prepare_librispeech(corpus, tmp_path, splits=splits, oov="g2p", jobs=1, progress=False)
    for split in ("dev", "test"):
        clean = {u.id: u for u in read_manifest(tmp_path / f"{split}.jsonl")}
        twin = read_manifest(tmp_path / f"{split}-phone.jsonl")
        assert {u.id for u in twin} == set(clean) and summary[f"{split}-phone"]["utterances"] == len(clean)
        for u in twin:
            c = clean[u.id]
            assert (u.text, u.speaker, u.phones, u.speech) == (c.text, c.speaker, c.phones, c.speech)
            assert u.duration == pytest.approx(c.duration, abs=1 / PHONE_RATE)
            assert soundfile.info(u.audio).samplerate == PHONE_RATE
        for sidecar in (corpus / split).rglob("*.txt"):
            assert (corpus / f"{split}-phone" / sidecar.relative_to(corpus / split)).read_text() == sidecar.read_text()


def test_phone_twin_is_the_channel_as_the_server_hears_it_and_is_seeded(phone_corpus, tmp_path):
    """Reading a twin file (load_audio: 8 kHz → 16 kHz) gives the channel's output up to 16-bit
    rounding, and the server's stream resampler, fed the file in uneven pieces, gives the same
    samples bit for bit; the same seed writes the same bytes."""
    from mtspeech.data.noisy_twins import make_phone_twin, phone_level_dbov

    corpus, summary = phone_corpus
    files = sorted((corpus / "test").rglob("*.flac"))
    for i, path in enumerate(files[:3]):
        twin_path = corpus / "test-phone" / path.relative_to(corpus / "test")
        level = phone_level_dbov(3, "test", i)
        read = load_audio(twin_path).numpy()
        channel = telephone_channel(load_audio(path).numpy(), RATE, level)
        assert abs(len(read) - len(channel)) <= 1
        n = min(len(read), len(channel))
        assert np.abs(read[:n] - channel[:n]).max() < 1e-3
        samples, _ = soundfile.read(twin_path, dtype="float32")
        stream, out, start = StreamResampler(PHONE_RATE), [], 0
        for size in np.random.default_rng(i).integers(1, 900, size=len(samples)):
            out.append(stream.push(samples[start: start + size]))
            start += int(size)
            if start >= len(samples):
                break
        assert np.array_equal(np.concatenate([*out, stream.flush()]), read)
    again = tmp_path / "again"
    shutil.copytree(corpus / "test", again / "test")
    assert make_phone_twin(again, "test", seed=3, progress=False) == summary["test-phone"]
    for path in files:
        rel = path.relative_to(corpus / "test")
        assert (again / "test-phone" / rel).read_bytes() == (corpus / "test-phone" / rel).read_bytes()


def test_synth_phone_twins_only_writes_the_same_twins_and_run_sh_scores_test_phone(phone_corpus, tmp_path, capsys):
    """`mtspeech synth --phone-twins-only` (run.sh's step for a corpus made before the telephone
    twins) writes the function's bytes and its summary; run.sh evaluates test-phone and the
    demo's results collect it."""
    import argparse
    import importlib.util
    import json
    from pathlib import Path

    from mtspeech.data.synth_command import add_arguments, main

    corpus, summary = phone_corpus
    for split in ("dev", "test"):
        shutil.copytree(corpus / split, tmp_path / split)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--out", str(tmp_path), "--phone-twins-only", "--seed", "3", "--no-progress"])) == 0
    assert json.loads(capsys.readouterr().out) == summary
    assert json.loads((tmp_path / "phone_twins.json").read_text())["twins"] == summary
    for twin in summary:
        for path in (corpus / twin).rglob("*.flac"):
            assert (tmp_path / twin / path.relative_to(corpus / twin)).read_bytes() == path.read_bytes()
    repo = Path(__file__).resolve().parents[2]
    run = "\n".join(line.split("#")[0] for line in (repo / "recipes/synthetic/run.sh").read_text().splitlines())
    assert "--phone-twins-only" in run and "test-phone" in run
    spec = importlib.util.spec_from_file_location("demo_results", repo / "scripts" / "demo_results.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert "test-phone" in demo.SPLITS
