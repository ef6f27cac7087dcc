"""adapt-dev: new voices to tune adaptation on. Fixed by its seed, reading dev sentences only,
with voices, ids and chapters no other split has, and written without touching the corpus."""

import json

from mtspeech.data.adapt_dev import ADAPT_DEV_SEED, ADAPT_DEV_SPLIT, ADAPT_DEV_VARIANTS, plan_adapt_dev
from mtspeech.data.final_test import FINAL_VARIANTS, plan_final
from mtspeech.data.librispeech import prepare_librispeech
from mtspeech.data.new_voices import NEW_VARIANTS, TRAIN_VARIANTS, plan_train_voices, plan_voices
from mtspeech.data.synth import SynthConfig, plan_corpus, spare_training_sentences
from mtspeech.data.synth_command import main
from mtspeech.data.voices import SEEN_VARIANTS, UNSEEN_VARIANTS
from corpus_digests import copied_corpus, file_digests

# Large enough for 30 distinct dev sentences per speaker and for test-final's plan; only planned.
CFG = SynthConfig(hours=0.4, seed=3, jobs=1, progress=False)



def test_the_plan_is_fixed_by_its_seed_and_reads_distinct_dev_sentences():
    speakers, items = plan_adapt_dev(CFG, speakers=6, per_speaker=26)
    assert plan_adapt_dev(CFG, speakers=6, per_speaker=26) == (speakers, items)
    other = plan_adapt_dev(CFG, speakers=6, per_speaker=26, seed=ADAPT_DEV_SEED + 1)
    assert [s.id for s in other[0]] != [s.id for s in speakers]  # another seed, other voices
    assert len(items) == 6 * 26 and len({u for u, _, _ in items}) == len(items)
    _, plan, _ = plan_corpus(CFG)
    for spk in speakers:  # every voice reads 26 different dev sentences
        texts = [t for _, s, t in items if s == spk]
        assert len(set(texts)) == 26 and set(texts) <= {t for _, _, t in plan["dev"]}
    training = {t for _, _, t in plan["train"]} | set(spare_training_sentences(CFG))
    training |= {t for _, _, t in plan_train_voices(CFG)[1]}
    assert not {t for _, _, t in items} & training


def test_its_voices_ids_and_chapters_are_no_other_splits():
    corpus_speakers, plan, _ = plan_corpus(CFG)
    others = [plan_voices(CFG), plan_train_voices(CFG), plan_final(CFG)]
    speakers, items = plan_adapt_dev(CFG, speakers=20, per_speaker=2)
    other_speakers = corpus_speakers + [s for spk, _ in others for s in spk]
    assert not {s.id for s in speakers} & {s.id for s in other_speakers}
    assert not {s.voice for s in speakers} & {s.voice for s in other_speakers}
    chapters = {u.split("-")[1] for split in [*plan.values(), *(i for _, i in others)] for u, _, _ in split}
    assert not {u.split("-")[1] for u, _, _ in items} & chapters
    # half plain Klatt variants no split uses; half conversions of train-voices' variants, never plain
    used = set(sum(SEEN_VARIANTS.values(), ()) + sum(UNSEEN_VARIANTS.values(), ()) + sum(NEW_VARIANTS.values(), ())
               + TRAIN_VARIANTS + FINAL_VARIANTS)
    assert not set(ADAPT_DEV_VARIANTS) & used
    plain, converted = speakers[:10], speakers[10:]
    assert all(s.conversion is None and s.variant in ADAPT_DEV_VARIANTS for s in plain)
    assert {s.variant for s in plain} == set(ADAPT_DEV_VARIANTS)  # each used before any repeats
    assert all(s.conversion is not None and s.variant in TRAIN_VARIANTS for s in converted)
    assert {s.engine for s in speakers} == {"espeak-ng"} and [s.sex for s in speakers] == ["F", "M"] * 10


def test_adapt_dev_only_writes_the_split_and_leaves_the_corpus_alone(synth_corpus, tmp_path):
    root, before, parser = copied_corpus(synth_corpus, tmp_path)
    argv = ["--out", str(root), "--adapt-dev-only", "--adapt-dev-speakers", "2", "--adapt-dev-utterances", "2",
            "--jobs", "1", "--no-progress"]
    assert main(parser.parse_args([*argv[:-1], "--adapt-dev-utterances", "1000", "--no-progress"])) == 2
    assert file_digests(root) == before
    assert main(parser.parse_args(argv)) == 0
    after = file_digests(root)
    assert {k for k in before if before[k] != after.get(k)} == {"SPEAKERS.TXT"}  # appended to
    summary = json.loads((root / "adapt_dev.json").read_text())
    assert summary["seed"] == ADAPT_DEV_SEED and summary["speakers"] == 2 and summary["utterances"] == 4
    assert main(parser.parse_args(argv)) == 0
    assert file_digests(root) == after  # the same seed writes the same bytes

    out = prepare_librispeech(root, tmp_path / "m", splits=[ADAPT_DEV_SPLIT], jobs=1, progress=False)
    assert set(out["splits"]) == {ADAPT_DEV_SPLIT}
    lines = [json.loads(x) for x in (tmp_path / "m" / f"{ADAPT_DEV_SPLIT}.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(u["text"] and u["speaker"] for u in lines)
