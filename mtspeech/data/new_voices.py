"""More held-out voices for the synthetic corpus: `test-voices`, sized for speaker verification.

test-unseen holds 4 voices: too few to rank speaker embeddings, since one voice moves an EER
over 4 speakers by points. `mtspeech synth --out DIR --voices-only` adds

    DIR/test-voices/SPK/CHAP/...      24 speakers x 8 of the `test` split's sentences
    DIR/test_voices.json              their voices and the split's size

on espeak-ng voice variants that no other split uses (`NEW_VARIANTS`: neither training's nor
test-unseen's; every variant of a sex once before any is reused with another accent), each
with a random accent, pitch and rate, so neither the timbre nor the speaker was heard in
training. The speakers are appended to SPEAKERS.TXT (SUBSET
test-voices). The other splits are untouched: the plan draws from its own random stream, and
its utterances are rendered with indices after the corpus's own. Output depends only on the
corpus's `synth.json` config and the two sizes.

`mtspeech synth --out DIR --train-voices-only` adds, the same way,

    DIR/train-voices/SPK/CHAP/...     30 more training speakers x 16 training sentences `train` never reads
    DIR/train_voices.json             their voices and the split's size

on `TRAIN_VARIANTS`: espeak-ng variants that no split uses, and none a sibling of a test
variant. The corpus trains its speaker head on 28 voices over 11 variants; this split is
for measuring what more training voices give an embedding on voices it never heard
(`data.train` takes a list of manifests: train.jsonl plus train-voices.jsonl).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

from mtspeech.data.synth import (SynthConfig, _Job, corpus_config, plan_corpus, render_jobs,
                                 spare_training_sentences, write_chapter_sidecars)
from mtspeech.data.voices import LANGUAGES, Speaker

log = logging.getLogger(__name__)

SPLIT = "test-voices"
# espeak-ng-data/voices/!v variants that voices.SEEN_VARIANTS / UNSEEN_VARIANTS never use;
# robots, whispers and effects left out. adam, benjamin, caleb, david and edward use the
# Klatt formant synthesiser, a different source model from the other voices.
NEW_VARIANTS = {
    "F": ("Alicia", "Andrea", "anika", "aunty", "linda", "steph", "steph2", "grandma"),
    "M": ("Alex", "Andy", "Denis", "Diogo", "Gene", "Henrique", "Hugo", "Jacky", "Lee", "Marco",
          "Michael", "Mike", "adam", "benjamin", "caleb", "david", "edward", "iven", "john", "max",
          "michel", "norbert", "paul", "quincy", "rob", "robert", "travis", "victor", "zac"),
}

TRAIN_SPLIT = "train-voices"
# More training timbres: !v variants that no split uses, leaving out the siblings of test
# variants (Gene2, edward2, iven2-4, steph3, AnxiousAndy, RicishayMax2-3), Klatt voices
# (klatt*, announcer: test-voices holds Klatt voices, a source model training should not
# have heard) and effects (robots, whispers, croak, Demonic, Tweaky). Each voice's sex, and
# so its pitch range, is assigned, not taken from the variant.
TRAIN_VARIANTS = ("Mario", "Nguyen", "RicishayMax", "antonio", "boris", "ed", "grandpa", "gustave",
                  "kaukovalta", "marcelo", "miguel", "pablo", "pedro", "sandro", "shelby")


def plan_voices(cfg: SynthConfig, speakers: int = 24, per_speaker: int = 8) -> tuple[list[Speaker], list]:
    """(new speakers, [(utt_id, speaker, text)]) for the corpus `cfg` plans; half of them
    female. Each reads `per_speaker` distinct sentences of the corpus's `test` split."""
    if speakers < 2 or per_speaker < 2:
        raise ValueError(f"speaker verification needs >= 2 speakers of >= 2 utterances "
                         f"(got {speakers} x {per_speaker})")
    old_speakers, plan, _ = plan_corpus(cfg)
    test_sentences = sorted({text for _, _, text in plan["test"]})
    if per_speaker > len(test_sentences):
        raise ValueError(f"{per_speaker} sentences per speaker, but the test split has {len(test_sentences)}")
    rng = random.Random(f"{cfg.seed}-{SPLIT}")  # its own stream: the corpus's plan is untouched
    taken_ids = {int(s.id) for s in old_speakers}
    taken_chapters = {utt.split("-")[1] for items in plan.values() for utt, _, _ in items}
    ids = rng.sample(sorted(set(range(100, 10000)) - taken_ids), speakers)
    voices = {}
    for sex, variants in NEW_VARIANTS.items():  # every variant once before any repeats
        order = list(variants)
        rng.shuffle(order)
        voices[sex] = order
    new, items, used = [], [], set()
    for i, spk_id in enumerate(ids):
        sex = "FM"[i % 2]
        variant = voices[sex][(i // 2) % len(voices[sex])]
        language = rng.choice([lang for lang in LANGUAGES if (lang, variant) not in used])
        used.add((language, variant))
        pitch = rng.randint(35, 75) if sex == "F" else rng.randint(25, 60)
        speaker = Speaker(str(spk_id), sex, language, variant, pitch, rng.randint(140, 185), seen=False)
        new.append(speaker)
        chapter = str(rng.randint(10000, 299999))
        while chapter in taken_chapters:
            chapter = str(rng.randint(10000, 299999))
        taken_chapters.add(chapter)
        for k, text in enumerate(rng.sample(test_sentences, per_speaker)):
            items.append((f"{spk_id}-{chapter}-{k:04d}", speaker, text))
    return new, items


def plan_train_voices(cfg: SynthConfig, speakers: int = 30, per_speaker: int = 16) -> tuple[list[Speaker], list]:
    """(new training speakers, [(utt_id, speaker, text)]) on `TRAIN_VARIANTS`, half of them
    female, reading the corpus's spare training sentences (`synth.spare_training_sentences`:
    ones `train` does not read, so the two splits together read more distinct sentences, and
    no held-out sentence is heard), each sentence once while any is left. Speaker ids (10000-19999) and chapters (300000-399999)
    come from ranges the corpus and test-voices never draw from."""
    most = len(TRAIN_VARIANTS) * len(LANGUAGES)
    if not 1 <= speakers <= most or per_speaker < 1:
        raise ValueError(f"train-voices: 1 to {most} speakers (one per variant and accent) of >= 1 "
                         f"utterance (got {speakers} x {per_speaker})")
    spare = spare_training_sentences(cfg)
    if per_speaker > len(spare):
        raise ValueError(f"{per_speaker} sentences per speaker, but the corpus keeps {len(spare)} spare "
                         "training sentences (SynthConfig.spare_sentences)")
    rng = random.Random(f"{cfg.seed}-{TRAIN_SPLIT}")  # its own stream, like test-voices
    order = list(spare)
    rng.shuffle(order)
    ids = rng.sample(range(10000, 20000), speakers)
    chapters = rng.sample(range(300000, 400000), speakers)
    variants = list(TRAIN_VARIANTS)
    rng.shuffle(variants)
    new, items, used = [], [], set()
    for i, (spk_id, chapter) in enumerate(zip(ids, chapters)):
        sex = "FM"[i % 2]
        variant = variants[i % len(variants)]  # every variant once before any repeats
        language = rng.choice([lang for lang in LANGUAGES if (lang, variant) not in used])
        used.add((language, variant))
        pitch = rng.randint(35, 75) if sex == "F" else rng.randint(25, 60)
        speaker = Speaker(str(spk_id), sex, language, variant, pitch, rng.randint(140, 185), seen=True)
        new.append(speaker)
        for k in range(per_speaker):  # the next sentences, round the list if speakers x per_speaker exceed it
            items.append((f"{spk_id}-{chapter}-{k:04d}", speaker, order[(i * per_speaker + k) % len(order)]))
    return new, items


def synthesize_voices(root: str | Path, speakers: int = 24, per_speaker: int = 8,
                      jobs: int | None = None, progress: bool = True) -> dict:
    """Write `root/test-voices` next to the corpus at `root`; returns (and stores in
    `root/test_voices.json`) the split's size and its speakers."""
    cfg = corpus_config(root)
    new, items = plan_voices(cfg, speakers, per_speaker)
    return write_added_split(Path(root), cfg, SPLIT, new, items, 0, jobs, progress)


def synthesize_train_voices(root: str | Path, speakers: int = 30, per_speaker: int = 16,
                            jobs: int | None = None, progress: bool = True) -> dict:
    """Write `root/train-voices` next to the corpus at `root`; returns (and stores in
    `root/train_voices.json`) the split's size and its speakers."""
    cfg = corpus_config(root)
    new, items = plan_train_voices(cfg, speakers, per_speaker)
    # Render indices (noise seeds) past any test-voices utterance's.
    return write_added_split(Path(root), cfg, TRAIN_SPLIT, new, items, 1_000_000, jobs, progress)


def write_added_split(root: Path, cfg: SynthConfig, split: str, new: list[Speaker], items: list,
                      offset: int, jobs: int | None, progress: bool, render_seed: int | None = None) -> dict:
    """Render a split added next to the corpus (test-voices, train-voices, test-final):
    `items` into `root/split`, their audio drawn from `render_seed` (default: the corpus's seed)
    at render indices from `offset` past the corpus's own; append `new` to SPEAKERS.TXT and
    write `root/<split>.json`; returns that summary."""
    first = offset + sum(len(v) for v in plan_corpus(cfg)[1].values())  # indices after the corpus's own
    seed = cfg.seed if render_seed is None else render_seed
    render = [_Job(first + k, split, utt_id, str(root / split / spk.id / utt_id.split("-")[1] / f"{utt_id}.flac"),
                   text, spk, seed, cfg.noise_snr_db) for k, (utt_id, spk, text) in enumerate(items)]
    results = render_jobs(render, jobs, progress)
    write_chapter_sidecars(render, results)
    minutes = {s.id: 0.0 for s in new}
    for job in render:
        minutes[job.speaker.id] += results[job.utt_id][0] / 60
    _append_speakers(root / "SPEAKERS.TXT", new, minutes, split)
    summary = {"split": split, "speakers": len(new), "utterances": len(render),
               "seconds": round(sum(d for d, _ in results.values()), 2),
               "voices": [dataclasses.asdict(s) | {"voice": s.voice} for s in new]}
    (root / f"{split.replace('-', '_')}.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s: %d speakers, %d utterances", root / split, len(new), len(render))
    return summary


def _append_speakers(path: Path, speakers: list[Speaker], minutes: dict[str, float], split: str) -> None:
    """Add the speakers to SPEAKERS.TXT, replacing any line of theirs from an earlier run."""
    ids = {s.id for s in speakers}
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith(";") or line.split("|")[0].strip() not in ids]
    kept += [f"{s.id:<5}| {s.sex} | {split:<16} | {minutes[s.id]:5.2f} | {s.engine} {s.voice} p{s.pitch} s{s.rate}"
             for s in sorted(speakers, key=lambda s: int(s.id))]
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
