"""test-final: the final test set. Deterministic from its seed, disjoint from every other split
in sentences and voices, closed-vocabulary, twinned, and never made or scored by run.sh."""

import json
import re
from pathlib import Path

import pytest

from mtspeech.data.final_test import FINAL_SEED, FINAL_SPLIT, FINAL_VARIANTS, final_sentences, plan_final
from mtspeech.data.librispeech import prepare_librispeech
from mtspeech.data.new_voices import NEW_VARIANTS, TRAIN_VARIANTS, plan_train_voices, plan_voices
from mtspeech.data.noisy_twins import OPTIONAL_TWIN_SPLITS, TWIN_SPLITS
from mtspeech.data.synth import SynthConfig, plan_corpus, spare_training_sentences
from mtspeech.data.synth_command import main
from mtspeech.data.voices import SEEN_VARIANTS, TEST_ENGINE, TRAIN_FLITE_VOICES, UNSEEN_VARIANTS
from corpus_digests import copied_corpus, file_digests

REPO = Path(__file__).resolve().parents[2]
# Large enough that training reads a vocabulary with hundreds of unread sentences inside it;
# only planned here, never rendered.
CFG = SynthConfig(hours=0.3, seed=3, jobs=1, progress=False)
TWINS = (f"{FINAL_SPLIT}-snr10", f"{FINAL_SPLIT}-snr0", f"{FINAL_SPLIT}-room")



def test_the_plan_is_fixed_by_its_seed():
    speakers, items = plan_final(CFG, speakers=10, per_speaker=4)
    assert plan_final(CFG, speakers=10, per_speaker=4) == (speakers, items)
    other = plan_final(CFG, speakers=10, per_speaker=4, seed=FINAL_SEED + 1)
    assert {t for _, _, t in other[1]} != {t for _, _, t in items}  # another seed, another test set
    assert len(items) == 40 and len({u for u, _, _ in items}) == 40


def test_its_sentences_are_read_by_no_other_split_and_closed_vocabulary():
    _, plan, _ = plan_corpus(CFG)
    _, items = plan_final(CFG, speakers=10, per_speaker=4)
    texts = [t for _, _, t in items]
    assert len(set(texts)) == len(texts)  # each sentence read once
    others = {t for split in plan.values() for _, _, t in split}
    others |= {t for _, _, t in plan_voices(CFG)[1]} | {t for _, _, t in plan_train_voices(CFG)[1]}
    others |= set(spare_training_sentences(CFG))
    assert not set(texts) & others
    assert {"train", "dev", "test", "test-unseen", "test-engine"} <= set(plan)
    vocab = {w for _, _, t in plan["train"] for w in t.split()}
    assert all(w in vocab for t in texts for w in t.split())  # like test: every word taught
    with pytest.raises(ValueError, match="closed-vocabulary sentences"):
        plan_final(CFG, speakers=10, per_speaker=len(final_sentences(CFG)))


def test_its_voices_are_used_by_no_other_split_and_never_the_test_engine():
    corpus_speakers, plan, _ = plan_corpus(CFG)
    test_voices, tv_items = plan_voices(CFG)
    train_voices, trv_items = plan_train_voices(CFG)
    speakers, items = plan_final(CFG, speakers=20, per_speaker=2)
    others = corpus_speakers + test_voices + train_voices
    assert not {s.id for s in speakers} & {s.id for s in others}
    assert not {s.voice for s in speakers} & {s.voice for s in others}
    chapters = {u.split("-")[1] for split in [*plan.values(), tv_items, trv_items] for u, _, _ in split}
    assert not {u.split("-")[1] for u, _, _ in items} & chapters
    # espeak-ng: variants no split may use, and none a sibling of a training variant
    used = set(sum(SEEN_VARIANTS.values(), ()) + sum(UNSEEN_VARIANTS.values(), ()) + sum(NEW_VARIANTS.values(), ())
               + TRAIN_VARIANTS)
    assert not set(FINAL_VARIANTS) & used
    trained = {re.sub(r"\d+$", "", v) for v in sum(SEEN_VARIANTS.values(), ()) + TRAIN_VARIANTS}
    assert not {re.sub(r"\d+$", "", v) for v in FINAL_VARIANTS} & trained
    espeak = [s for s in speakers if s.engine == "espeak-ng"]
    assert {s.variant for s in espeak} == set(FINAL_VARIANTS)  # 16 espeak-ng voices: every variant used
    # flite: only conversions (the plain awb and rms are training speakers); seen engines only
    flite = [s for s in speakers if s.engine == "flite"]
    assert flite and all(s.conversion and s.variant in TRAIN_FLITE_VOICES for s in flite)
    assert {s.engine for s in speakers} == {"espeak-ng", "flite"} and TEST_ENGINE not in {s.engine for s in speakers}
    assert [s.sex for s in speakers] == ["F", "M"] * 10


def test_final_only_writes_the_split_and_its_twins_and_leaves_the_corpus_alone(synth_corpus, tmp_path):
    root, before, parser = copied_corpus(synth_corpus, tmp_path)
    argv = ["--out", str(root), "--final-only", "--final-speakers", "2", "--final-utterances", "2",
            "--jobs", "1", "--no-progress"]
    too_many = ["--final-speakers", "16", "--final-utterances", "16"]  # more than the tiny corpus leaves
    assert main(parser.parse_args([*argv, *too_many])) == 2 and file_digests(root) == before
    assert main(parser.parse_args(["--out", str(tmp_path / "none"), "--final-only"])) == 2
    assert main(parser.parse_args(argv)) == 0
    after = file_digests(root)
    assert {k for k in before if before[k] != after.get(k)} == {"SPEAKERS.TXT"}  # appended to
    assert not (root / "noisy_twins.json").exists()  # the other splits' twin record is not rewritten
    summary = json.loads((root / "test_final.json").read_text())
    assert summary["seed"] == FINAL_SEED and summary["utterances"] == 4 and summary["sentences"] == 4
    assert set(summary["twins"]) == set(TWINS)
    clean = sorted(p.relative_to(root / FINAL_SPLIT) for p in (root / FINAL_SPLIT).rglob("*.flac"))
    for twin in TWINS:
        assert sorted(p.relative_to(root / twin) for p in (root / twin).rglob("*.flac")) == clean
    assert main(parser.parse_args(argv)) == 0
    assert file_digests(root) == after  # the same seed writes the same bytes

    out = prepare_librispeech(root, tmp_path / "m", jobs=1, progress=False)
    assert {FINAL_SPLIT, *TWINS} <= set(out["splits"])
    lines = [json.loads(x) for x in (tmp_path / "m" / f"{FINAL_SPLIT}.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(u["text"] and u["phones"] and u["speech"] and u["sex"] in "FM" for u in lines)


def test_run_sh_neither_makes_nor_scores_it_and_final_sh_does(synth_corpus):
    # the default corpus and `--twins-only` (which run.sh calls) never write it
    assert not any(p.name.startswith(FINAL_SPLIT) for p in synth_corpus.iterdir())
    assert FINAL_SPLIT not in (*TWIN_SPLITS, *OPTIONAL_TWIN_SPLITS)
    run = (REPO / "recipes/synthetic/run.sh").read_text()
    commands = "\n".join(line.split("#")[0] for line in run.splitlines())  # comments may point to final.sh
    assert FINAL_SPLIT not in commands and "--final-only" not in commands and "final.sh" not in commands
    final = (REPO / "recipes/synthetic/final.sh").read_text()
    assert "--final-only" in final
    for split in (FINAL_SPLIT, *TWINS):
        assert split in final
