import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

from mtspeech.data.synth import SPLITS, SynthConfig, synthesize_corpus

ID = re.compile(r"^(\d+)-(\d+)-(\d{4})$")


def _trans(root: Path, split: str) -> dict[str, str]:
    out = {}
    for t in (root / split).glob("*/*/*.trans.txt"):
        for line in t.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            out[utt_id] = text
    return out


def _segments(root: Path, split: str) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for t in (root / split).glob("*/*/*.segments.txt"):
        for line in t.read_text().splitlines():
            utt_id, *segs = line.split()
            out[utt_id] = [tuple(map(float, s.split("-"))) for s in segs]
    return out


def test_librispeech_layout(synth_corpus):
    assert sorted(p.name for p in synth_corpus.iterdir() if p.is_dir()) == sorted(SPLITS)
    for split in SPLITS:
        flacs = sorted((synth_corpus / split).glob("*/*/*.flac"))
        assert flacs, split
        for f in flacs:
            m = ID.match(f.stem)
            assert m, f
            speaker, chapter = m.group(1), m.group(2)
            assert f.parent.name == chapter and f.parent.parent.name == speaker
            assert (f.parent / f"{speaker}-{chapter}.trans.txt").exists()
            assert (f.parent / f"{speaker}-{chapter}.segments.txt").exists()
            info = sf.info(str(f))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
        assert set(_trans(synth_corpus, split)) == {f.stem for f in flacs}
        # transcript lines are sorted by id, as in LibriSpeech
        for t in (synth_corpus / split).glob("*/*/*.trans.txt"):
            ids = [line.split()[0] for line in t.read_text().splitlines()]
            assert ids == sorted(ids)


def test_speakers_txt_and_metadata(synth_corpus):
    lines = (synth_corpus / "SPEAKERS.TXT").read_text().splitlines()
    rows = [[f.strip() for f in line.split("|")] for line in lines if not line.startswith(";")]
    meta = json.loads((synth_corpus / "synth.json").read_text())
    assert len(rows) == len(meta["speakers"]) == meta["config"]["speakers"] + meta["config"]["test_engine_speakers"]
    by_id = {s["id"]: s for s in meta["speakers"]}
    for spk, sex, subset, minutes, name in rows:
        assert sex == by_id[spk]["sex"] in ("F", "M")
        assert subset == by_id[spk]["subset"]
        assert subset == ("train" if by_id[spk]["seen"] else
                          "test-engine" if by_id[spk]["engine"] == "festival" else "test-unseen")
        assert float(minutes) >= 0 and by_id[spk]["voice"] in name and by_id[spk]["engine"] in name
    # every speaker's voice parameters are distinct
    params = {(s["engine"], s["voice"], s["pitch"], s["rate"]) for s in meta["speakers"]}
    assert len(params) == len(meta["speakers"])


def test_splits_speakers_and_sentences(synth_corpus):
    meta = json.loads((synth_corpus / "synth.json").read_text())
    spk = {split: {p.name for p in (synth_corpus / split).iterdir()} for split in SPLITS}
    seen = {s["id"] for s in meta["speakers"] if s["seen"]}
    assert spk["train"] == seen
    assert spk["dev"] <= seen and spk["test"] <= seen
    assert not spk["test-unseen"] & seen and not spk["test-engine"] & seen
    # held-out voices (espeak variants) are never used by a training speaker, nor the held-out engine
    variants = {s["variant"] for s in meta["speakers"] if s["seen"]}
    assert all(s["variant"] not in variants for s in meta["speakers"] if not s["seen"])
    engines = {split: {s["engine"] for s in meta["speakers"] if s["id"] in spk[split]} for split in SPLITS}
    assert engines["test-engine"] == {"festival"} and "festival" not in engines["train"]

    texts = {split: set(_trans(synth_corpus, split).values()) for split in SPLITS}
    assert not texts["train"] & (texts["dev"] | texts["test"] | texts["test-unseen"] | texts["test-engine"])
    assert not texts["dev"] & (texts["test"] | texts["test-engine"])
    assert texts["test-unseen"] <= texts["test"]
    # the demo is closed-vocabulary: every held-out word also occurs in the train sentences
    # (the sentence pool of the split, which this tiny corpus only samples)
    from mtspeech.data.sentences import sentence_pool
    cfg = SynthConfig(**meta["config"])
    held = texts["dev"] | texts["test"]
    pool_train = set(sentence_pool(cfg.min_words, cfg.max_words, cfg.vocab_words)) - held
    train_vocab = {w for s in pool_train for w in s.split()}
    assert {w for s in held for w in s.split()} <= train_vocab


def test_segments_are_sorted_and_inside_the_audio(synth_corpus):
    for split in SPLITS:
        segs = _segments(synth_corpus, split)
        for utt_id, ss in segs.items():
            spk, chap, _ = utt_id.split("-")
            dur = sf.info(str(synth_corpus / split / spk / chap / f"{utt_id}.flac")).duration
            assert ss and ss[0][0] > 0.05 and ss[-1][1] < dur - 0.05  # leading/trailing pauses
            for (a, b), (c, _) in zip(ss, ss[1:] + [(dur, dur)]):
                assert 0 < a < b < c


def test_clean_audio_is_silent_exactly_outside_the_segments(tmp_path):
    cfg = SynthConfig(hours=0.004, seed=7, speakers=3, unseen_speakers=1, noise_snr_db=None,
                      jobs=1, progress=False)
    synthesize_corpus(tmp_path, cfg)
    segs = _segments(tmp_path, "train")
    assert segs
    for utt_id, ss in segs.items():
        spk, chap, _ = utt_id.split("-")
        wav, sr = sf.read(str(tmp_path / "train" / spk / chap / f"{utt_id}.flac"), dtype="int16")
        inside = np.zeros(len(wav), bool)
        for a, b in ss:
            i, j = round(a * sr), round(b * sr)
            inside[i:j] = True
            assert wav[i] != 0 and wav[j - 1] != 0  # segments start and end on speech
        assert not wav[~inside].any()
        assert np.abs(wav[inside]).max() > 3000


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed_and_independent_of_jobs(tmp_path):
    cfg = SynthConfig(hours=0.004, seed=3, speakers=3, unseen_speakers=1, jobs=1, progress=False)
    synthesize_corpus(tmp_path / "a", cfg)
    synthesize_corpus(tmp_path / "b", replace(cfg, jobs=2))
    synthesize_corpus(tmp_path / "c", replace(cfg, seed=4))
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a != c


def test_command_line(tmp_path, capsys):
    from mtspeech.cli import main

    rc = main(["synth", "--out", str(tmp_path), "--hours", "0.003", "--speakers", "3",
               "--unseen-speakers", "1", "--test-engine-speakers", "2", "--jobs", "1", "--no-noise", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["speakers"] == 3 + 2 and set(summary["splits"]) == set(SPLITS)
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["config"]["noise_snr_db"] is None and meta["config"]["hours"] == 0.003
