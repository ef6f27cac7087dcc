"""test-voices and train-voices: more voices added next to a corpus, leaving the corpus as it was."""

import argparse
import hashlib
import json
import re
from pathlib import Path

import pytest

from mtspeech.data.librispeech import prepare_librispeech
from mtspeech.data.new_voices import (NEW_VARIANTS, SPLIT, TRAIN_SPLIT, TRAIN_VARIANTS, plan_train_voices,
                                     plan_voices, synthesize_train_voices, synthesize_voices)
from mtspeech.data.noisy_twins import make_noisy_twins
from mtspeech.data.synth import SynthConfig, plan_corpus, spare_training_sentences, synthesize_corpus
from mtspeech.data.voices import SEEN_VARIANTS, UNSEEN_VARIANTS
from mtspeech.data.synth_command import add_arguments, main

CFG = SynthConfig(hours=0.01, seed=5, speakers=3, unseen_speakers=1, test_fraction=0.3, test_engine_speakers=1,
                  jobs=1, progress=False)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices_corpus")
    synthesize_corpus(root, CFG)
    before = _digests(root)
    speakers_txt = (root / "SPEAKERS.TXT").read_text()
    synthesize_voices(root, speakers=4, per_speaker=2, jobs=1, progress=False)
    return root, before, speakers_txt


def test_the_plan_uses_new_variants_new_ids_and_the_test_sentences():
    old_speakers, plan, _ = plan_corpus(CFG)
    new, items = plan_voices(CFG, speakers=6, per_speaker=2)
    assert {s.variant for s in new} <= set(NEW_VARIANTS["F"] + NEW_VARIANTS["M"])
    assert not {s.variant for s in new} & set(sum(SEEN_VARIANTS.values(), ()) + sum(UNSEEN_VARIANTS.values(), ()))
    assert [s.sex for s in new] == ["F", "M"] * 3 and len({s.variant for s in new}) == 6
    assert not {s.id for s in new} & {s.id for s in old_speakers}
    assert {t for _, _, t in items} <= {t for _, _, t in plan["test"]}
    assert len(items) == 12 and len({u for u, _, _ in items}) == 12
    assert plan_voices(CFG, speakers=6, per_speaker=2) == (new, items)  # deterministic
    with pytest.raises(ValueError, match="sentences per speaker"):
        plan_voices(CFG, speakers=2, per_speaker=1000)


def test_adds_the_split_and_its_speakers_and_leaves_the_corpus_alone(corpus, tmp_path):
    root, before, speakers_txt = corpus
    after = _digests(root)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {"SPEAKERS.TXT"}  # appended to; every other file byte-identical
    added = (root / "SPEAKERS.TXT").read_text().removeprefix(speakers_txt).splitlines()
    assert len(added) == 4 and all("| test-voices " in line for line in added)
    summary = json.loads((root / "test_voices.json").read_text())
    assert summary["speakers"] == 4 and summary["utterances"] == 8
    summary_again = synthesize_voices(root, speakers=4, per_speaker=2, jobs=1, progress=False)
    assert _digests(root) == after and summary_again == summary  # a re-run changes nothing

    out = prepare_librispeech(root, tmp_path / "m", jobs=1, progress=False)
    assert out["splits"][SPLIT]["utterances"] == 8
    lines = [json.loads(x) for x in (tmp_path / "m" / f"{SPLIT}.jsonl").read_text().splitlines()]
    assert len({u["speaker"] for u in lines}) == 4 and all(u["speech"] and u["sex"] in "FM" for u in lines)


def test_noisy_twins_include_the_split_when_present(corpus):
    root = corpus[0]
    twins = make_noisy_twins(root, snrs_db=(10.0,), progress=False)
    assert set(twins) == {"test-snr10", "test-unseen-snr10", "test-voices-snr10",
                          "test-room", "test-unseen-room", "test-voices-room"}
    assert sorted(p.name for p in (root / "test-voices-snr10").rglob("*.flac")) == \
        sorted(p.name for p in (root / SPLIT).rglob("*.flac"))


def test_train_voices_are_new_timbres_reading_training_sentences():
    old_speakers, plan, _ = plan_corpus(CFG)
    test_voices, _ = plan_voices(CFG, speakers=6, per_speaker=2)
    new, items = plan_train_voices(CFG, speakers=6, per_speaker=3)
    # no variant of any split, nor a numbered sibling of a held-out one (Gene2 of Gene)
    held_out = {re.sub(r"\d+$", "", v) for v in sum(NEW_VARIANTS.values(), ()) + sum(UNSEEN_VARIANTS.values(), ())}
    used = set(sum(SEEN_VARIANTS.values(), ()) + sum(UNSEEN_VARIANTS.values(), ()) + sum(NEW_VARIANTS.values(), ()))
    assert not {re.sub(r"\d+$", "", v) for v in TRAIN_VARIANTS} & held_out and not set(TRAIN_VARIANTS) & used
    assert {s.variant for s in new} <= set(TRAIN_VARIANTS) and len({s.variant for s in new}) == 6
    assert [s.sex for s in new] == ["F", "M"] * 3
    assert not {s.id for s in new} & {s.id for s in old_speakers + test_voices}
    chapters = {u.split("-")[1] for items_ in plan.values() for u, _, _ in items_}
    assert not {u.split("-")[1] for u, _, _ in items} & chapters
    # training sentences that train does not read: more distinct sentences, nothing held out heard
    assert {t for _, _, t in items} <= set(spare_training_sentences(CFG))
    assert not {t for _, _, t in items} & {t for items_ in plan.values() for _, _, t in items_}
    assert len(items) == 18 and len({u for u, _, _ in items}) == 18 and len({t for _, _, t in items}) == 18
    assert plan_train_voices(CFG, speakers=6, per_speaker=3) == (new, items)  # deterministic
    with pytest.raises(ValueError, match="train-voices"):
        plan_train_voices(CFG, speakers=len(TRAIN_VARIANTS) * 100)


def test_train_voices_become_a_training_manifest_next_to_an_untouched_corpus(tmp_path):
    root = tmp_path / "corpus"
    synthesize_corpus(root, CFG)
    before = _digests(root)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--out", str(root), "--train-voices-only", "--train-voice-speakers", "2",
                                   "--train-voice-utterances", "2", "--jobs", "1", "--no-progress"])) == 0
    assert {k for k in before if before[k] != _digests(root).get(k)} == {"SPEAKERS.TXT"}
    summary = json.loads((root / "train_voices.json").read_text())
    assert summary["speakers"] == 2 and summary["utterances"] == 4
    assert synthesize_train_voices(root, speakers=2, per_speaker=2, jobs=1, progress=False) == summary  # again: same
    out = prepare_librispeech(root, tmp_path / "m", jobs=1, progress=False)
    assert out["splits"][TRAIN_SPLIT]["utterances"] == 4
    lines = [json.loads(x) for x in (tmp_path / "m" / f"{TRAIN_SPLIT}.jsonl").read_text().splitlines()]
    assert {u["speaker"] for u in lines} == {v["id"] for v in summary["voices"]}
    assert all(u["speech"] and u["phones"] and u["text"] for u in lines)
