import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from mtspeech.data.lexicon import cmu_dictionary
from mtspeech.data.librispeech import prepare_librispeech, read_speakers_txt
from mtspeech.data.manifest import read_manifest
from mtspeech.data.segments import energy_segments, frame_energy_db, percentile_sorted
from mtspeech.data.synth import SPLITS
from test_synth import _segments, _trans


def test_prepared_manifests_match_what_the_synthesizer_wrote(synth_corpus, prepared_manifests):
    assert set(prepared_manifests) == set(SPLITS)
    meta = json.loads((synth_corpus / "synth.json").read_text())
    sex = {s["id"]: s["sex"] for s in meta["speakers"]}
    table = cmu_dictionary()
    for split, path in prepared_manifests.items():
        utts = read_manifest(path)
        trans, segs = _trans(synth_corpus, split), _segments(synth_corpus, split)
        assert sorted(u.id for u in utts) == sorted(trans)
        for u in utts:
            assert u.text == trans[u.id]
            assert u.speaker == u.id.split("-")[0] and u.sex == sex[u.speaker]
            assert u.phones == [p for w in u.text.split() for p in table[w]]
            assert np.allclose(u.speech, segs[u.id], atol=1e-6)
            info = sf.info(u.audio)
            assert u.duration == pytest.approx(info.duration, abs=1e-3)
    summary = json.loads((prepared_manifests["train"].parent / "summary.json").read_text())
    assert summary["utterances"] == sum(len(read_manifest(p)) for p in prepared_manifests.values())
    assert summary["speakers"] == len(meta["speakers"]) == meta["config"]["speakers"] + meta["config"]["test_engine_speakers"]
    assert summary["rejected"] == {} and summary["oov"]["oov_utterances"] == 0


def test_speakers_txt_name_may_contain_bars(tmp_path):
    p = tmp_path / "SPEAKERS.TXT"
    p.write_text(";ID  |SEX| SUBSET |MINUTES| NAME\n14   | F | train-clean-360  | 25.03 | Kristin\n"
                 "60   | M | train-clean-100  | 20.18 | |CBW|Simon\n")
    assert read_speakers_txt(p) == {"14": "F", "60": "M"}


@pytest.fixture
def broken_corpus(synth_corpus, tmp_path):
    """A copy of the synthetic train split with every kind of damage."""
    root = tmp_path / "corpus"
    shutil.copytree(synth_corpus / "train", root / "train")
    shutil.copy(synth_corpus / "SPEAKERS.TXT", root)
    chapter = max((p for p in (root / "train").glob("*/*") if p.is_dir()), key=lambda p: len(list(p.glob("*.flac"))))
    trans = next(chapter.glob("*.trans.txt"))
    flacs = sorted(chapter.glob("*.flac"))
    assert len(flacs) >= 2
    spk_chap = trans.name[: -len(".trans.txt")]
    flacs[0].write_bytes(b"fLaC" + bytes(range(256)) * 4)              # corrupt
    empty = chapter / f"{spk_chap}-0900.flac"
    empty.write_bytes(b"")                                              # empty
    orphan = chapter / f"{spk_chap}-0901.flac"
    shutil.copy(flacs[-1], orphan)                                      # audio, no transcript
    lines = trans.read_text().splitlines()
    ok_id = lines[-1].split()[0]
    lines[-1] = f"{ok_id} HELLO ZORBLATTIX"                             # an unknown word
    lines += [f"{spk_chap}-0900 EMPTY AUDIO", f"{spk_chap}-0950 NO AUDIO HERE"]
    trans.write_text("\n".join(lines) + "\n")
    (chapter / f"{spk_chap}.segments.txt").unlink()                     # energy segments path
    return root, flacs[0], empty, orphan, ok_id


@pytest.mark.parametrize("oov", ["g2p", "missing"])
def test_bad_inputs_are_reported_and_skipped(broken_corpus, tmp_path, oov):
    root, corrupt, empty, orphan, oov_id = broken_corpus
    out = tmp_path / f"out-{oov}"
    summary = prepare_librispeech(root, out, oov=oov, jobs=1, progress=False)
    assert summary["rejected"] == {"unreadable": 1, "empty": 1, "missing_transcript": 1, "missing_audio": 1}
    rejected = (out / "train.rejected.txt").read_text()
    for name in (corrupt.name, empty.name, orphan.name, "-0950"):
        assert name in rejected
    utts = {u.id: u for u in read_manifest(out / "train.jsonl")}
    assert corrupt.stem not in utts and empty.stem not in utts and orphan.stem not in utts
    assert utts, "the good utterances survive"
    assert summary["oov"]["oov_word_types"] == 1 and summary["oov"]["oov_utterances"] == 1
    if oov == "missing":
        assert utts[oov_id].phones is None
    else:
        assert utts[oov_id].phones[:4] == ["HH", "AH", "L", "OW"] and len(utts[oov_id].phones) > 6
    # no sidecar in the damaged chapter: energy segments stand in, close to the truth
    assert all(u.speech for u in utts.values())


def test_missing_split_is_an_error(synth_corpus, tmp_path):
    with pytest.raises(ValueError, match="train-clean-100"):
        prepare_librispeech(synth_corpus, tmp_path, splits=["train-clean-100"], jobs=1, progress=False)


def test_energy_segments_on_tone_silence_tone():
    sr = 16000
    t = np.arange(sr) / sr
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)                 # 1 s tone
    rng = np.random.default_rng(0)
    wav = np.concatenate([np.zeros(sr // 2), tone, np.zeros(sr), tone[: sr // 2], np.zeros(sr // 2)])
    wav = wav + 1e-4 * rng.standard_normal(len(wav))         # a -80 dB noise floor
    segs = energy_segments(wav, sr)
    assert len(segs) == 2
    (a, b), (c, d) = segs
    assert a == pytest.approx(0.5, abs=0.07) and b == pytest.approx(1.5, abs=0.07)
    assert c == pytest.approx(2.5, abs=0.07) and d == pytest.approx(3.0, abs=0.07)
    # a pause shorter than min_silence_s is bridged; silence alone gives nothing
    short_gap = np.concatenate([tone, np.zeros(sr // 10), tone])
    assert len(energy_segments(short_gap, sr)) == 1
    assert energy_segments(np.zeros(sr), sr) == []


def test_energy_segments_agree_with_synthetic_truth(prepared_manifests):
    # frame agreement of the energy detector with the exact segments on synthetic speech
    agree = []
    for u in read_manifest(prepared_manifests["train"])[:10]:
        wav, sr = sf.read(u.audio)
        t = np.arange(int(u.duration * 100)) / 100
        mask = lambda segs: np.any([(t >= a) & (t < b) for a, b in segs], axis=0)  # noqa: E731
        agree.append(np.mean(mask(energy_segments(wav, sr)) == mask(u.speech)))
    assert np.mean(agree) > 0.85


def test_command_line(synth_corpus, tmp_path, capsys):
    from mtspeech.cli import main

    rc = main(["prepare", "librispeech", str(synth_corpus), "--out", str(tmp_path),
               "--splits", "dev", "test", "--oov", "missing", "--jobs", "1", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["splits"]) == {"dev", "test"}
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["dev.jsonl", "test.jsonl"]


@pytest.mark.parametrize("sample_rate", [16000, 8000, 22050])
def test_frame_energy_is_the_windowed_mean_square(sample_rate):
    # the block-sum implementation against the definition, also where frame and hop share
    # no block (22.05 kHz: 551 and 220 samples)
    rng = np.random.default_rng(sample_rate)
    wav = (rng.standard_normal(sample_rate * 2 + 37) * np.linspace(0, 0.5, sample_rate * 2 + 37)).astype(np.float32)
    frame, hop = round(0.025 * sample_rate), round(0.010 * sample_rate)
    starts = range(0, len(wav) - frame + 1, hop)
    expected = [10 * np.log10(np.mean(wav[s:s + frame].astype(np.float64) ** 2) + 1e-10) for s in starts]
    assert np.allclose(frame_energy_db(wav, sample_rate), expected, rtol=0, atol=1e-9)


def test_percentile_sorted_is_numpys_percentile():
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 10, 101, 997]:
        for x in (rng.normal(-40, 20, n), np.round(rng.normal(-40, 5, n))):  # ties too
            for q in (0, 5, 50, 99, 100):
                assert percentile_sorted(np.sort(x), q) == float(np.percentile(x, q))


def test_manifest_lines_keep_the_field_order():
    from dataclasses import fields

    from mtspeech.data.manifest import Utterance

    u = Utterance("a", "a.flac", 1.5, "HI", "1", "F", ["HH", "AY"], [[0.1, 1.2]])
    assert list(u.to_json()) == [f.name for f in fields(Utterance)]
