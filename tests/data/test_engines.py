"""The corpus's engines and voice conversion: 16 kHz audio with exact speech segments, from a
seed; a missing engine or voice names its Debian package; sentence sets disjoint."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from mtspeech.data import engines
from mtspeech.data.engines import EngineMissingError, festival, require
from mtspeech.data.engines.world import Conversion, convert, warp_envelope
from mtspeech.data.phrase_audio import FRAME
from mtspeech.data.synth import SynthConfig, _Job, _work, plan_corpus, render, spare_training_sentences, \
    synthesize_corpus
from mtspeech.data.voices import Speaker

CONVERSION = Conversion(f0_scale=1.3, formant_warp=1.1, breathiness=1.2)
SPEAKERS = [
    Speaker("101", "F", "en-us", "f1", 60, 170, True),
    Speaker("102", "M", "en-gb-x-rp", "m3", 40, 170, True, "espeak-ng", CONVERSION),
    *[Speaker(str(110 + i), sex, "", voice, 0, 170, True, "flite") for i, (voice, sex) in
      enumerate({"awb": "M", "rms": "M", "slt": "F", "kal16": "M"}.items())],
    Speaker("120", "F", "", "rms", 0, 160, True, "flite", Conversion(1.7, 1.15, 0.8)),
    *[Speaker(str(130 + i), sex, "", voice, 0, 170, False, "festival") for i, (voice, sex) in
      enumerate(festival.VOICES.items())],
    Speaker("140", "F", "", "ked_diphone", 0, 180, False, "festival", Conversion(1.8, 1.18, 1.0)),
]


@pytest.mark.parametrize("speaker", SPEAKERS, ids=lambda s: f"{s.engine}-{s.voice}")
def test_every_engine_and_conversion_gives_16khz_audio_with_exact_segments_from_a_seed(speaker, tmp_path):
    job = _Job(7, "train", f"{speaker.id}-1000-0000", str(tmp_path / "a.flac"), "SHE SELLS FISH ON THE SHORE",
               speaker, seed=11, noise_snr_db=None)
    audio, segments = render(job)
    assert audio.dtype == np.int16 and segments
    inside = np.zeros(len(audio), bool)
    for a, b in segments:
        inside[a:b] = True
        assert audio[a] != 0 and audio[b - 1] != 0  # segments start and end on speech
        # ... and on speech, not on the engine's noise floor: edge 10 ms within 50 dB of the loudest
        frames = audio[a:b].astype(np.float64)
        loudest = max(np.mean(frames[i:i + FRAME] ** 2) for i in range(0, b - a - FRAME + 1, FRAME))
        for edge in (frames[:FRAME], frames[-FRAME:]):
            assert 10 * np.log10(np.mean(edge ** 2) / loudest) > -50 - 1e-6
    assert not audio[~inside].any()  # digital silence outside the segments
    assert np.abs(audio[inside]).max() > 3000

    again, again_segments = render(job)
    assert np.array_equal(again, audio) and again_segments == segments  # deterministic
    other, _ = render(replace(job, seed=12))
    assert not np.array_equal(other, audio)  # and drawn from the seed

    utt_id, seconds, segments_s = _work(job)
    info = sf.info(job.path)
    assert (info.samplerate, info.channels) == (16000, 1) and utt_id == job.utt_id
    assert seconds == pytest.approx(len(audio) / 16000)
    assert segments_s == [(a / 16000, b / 16000) for a, b in segments]


def test_conversion_scales_f0_and_warps_formants():
    import pyworld

    wav, rate = engines.synthesize("flite", "a long vowel sound", "awb", 0, 170)
    assert rate == 16000
    wav = wav.astype(np.float64)
    out = convert(wav, CONVERSION, rate).astype(np.float64)
    f0_in, f0_out = (pyworld.dio(x, 16000)[0] for x in (wav, out))
    ratio = np.median(f0_out[f0_out > 0]) / np.median(f0_in[f0_in > 0])
    assert ratio == pytest.approx(CONVERSION.f0_scale, rel=0.08)
    envelope = np.exp(-0.5 * ((np.arange(513) - 100) / 5.0) ** 2)[None, :]  # one formant at bin 100
    assert int(np.argmax(warp_envelope(envelope, 1.2))) == 120
    with pytest.raises(ValueError, match="f0_scale"):
        Conversion(f0_scale=10.0)


@pytest.mark.parametrize("engine,package", [("espeak-ng", "espeak-ng"), ("flite", "flite"),
                                            ("festival", "festival")])
def test_a_missing_engine_names_its_debian_package(engine, package, tmp_path, monkeypatch):
    import shutil

    require(engine)  # installed here
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without the binary
    with pytest.raises(EngineMissingError, match=f"'{package}' package"):
        require(engine)
    # A PATH with every other engine: the corpus stops before rendering, naming the package.
    path = tmp_path / "bin"
    path.mkdir()
    for other in engines.ENGINES.values():
        if other.name != engine:
            (path / other.binary).symlink_to(shutil.which(other.binary, path="/usr/local/bin:/usr/bin:/bin"))
    monkeypatch.setenv("PATH", str(path))
    with pytest.raises(EngineMissingError, match=f"apt-get install {package}"):
        synthesize_corpus(tmp_path / "corpus", SynthConfig(hours=0.003, speakers=3, unseen_speakers=1,
                                                           flite_share=0.5, jobs=1, progress=False))


def test_a_missing_festival_voice_names_its_package(tmp_path, monkeypatch):
    monkeypatch.setattr(festival, "VOICE_DIRS", (tmp_path,))
    with pytest.raises(EngineMissingError, match="festvox-kallpc16k"):
        require("festival", "kal_diphone")
    with pytest.raises(ValueError, match="unknown synthesis engine"):
        require("say")


def test_sentence_sets_of_the_full_corpus_plan():
    """The default 1.5 h plan (no audio): thousands of distinct training sentences, each read
    once; dev and test disjoint from them and closed-vocabulary; test-engine adds sentences
    with words no training sentence has."""
    cfg = SynthConfig()
    _, plan, counts = plan_corpus(cfg)
    texts = {split: [t for _, _, t in items] for split, items in plan.items()}
    sets = {split: set(t) for split, t in texts.items()}
    spare = set(spare_training_sentences(cfg))
    assert len(texts["train"]) == len(sets["train"]) == counts["train"]  # each read once
    assert len(sets["train"] | spare) >= 1500 and not spare & sets["train"]
    training = sets["train"] | spare
    for split in ("dev", "test", "test-unseen", "test-engine"):
        assert not sets[split] & training, split
    assert not sets["dev"] & sets["test"] and not sets["dev"] & sets["test-engine"]
    train_vocab = {w for s in sets["train"] for w in s.split()}
    assert {w for s in sets["dev"] | sets["test"] for w in s.split()} <= train_vocab
    oov = {w for s in sets["test-engine"] for w in s.split()} - {w for s in training for w in s.split()}
    assert len(oov) >= 50
    assert plan_corpus(cfg) == plan_corpus(cfg)[:1] + (plan, counts)  # deterministic
