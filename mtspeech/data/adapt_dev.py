"""New voices to tune adaptation on: `adapt-dev`, a dev split for `mtspeech adapt`'s knobs.

Adaptation's step sizes must be chosen on voices of their own: every voice split the corpus
has is either heard in training or a test split (test-unseen, test-engine, test-voices,
test-final), and a test split is scored once, never tuned on. `mtspeech synth --out DIR
--adapt-dev-only` adds, next to a corpus already there,

    DIR/adapt-dev/SPK/CHAP/...        12 speakers x 30 of the `dev` split's sentences
    DIR/adapt_dev.json                seed, speakers and the split's size

- **sentences**: the `dev` split's (held out from training, disjoint from every test split's),
  `per_speaker` distinct ones per speaker, so k = 20 leaves 10 utterances to score;
- **voices**: half of them plain espeak-ng voices on `ADAPT_DEV_VARIANTS`, the Klatt variants
  that no split uses (test-voices holds other Klatt voices, so the family is one the tests
  have); the other half WORLD conversions of train-voices' variants (`TRAIN_VARIANTS`: training
  heard them plain, never converted, as test-final does with flite's training voices). Each
  speaker has a random accent, pitch and rate; speaker ids 30000-39999 and chapters
  500000-599999 collide with nothing;
- **seed**: `ADAPT_DEV_SEED` (36, the issue's number) draws the plan and the audio's noise from
  streams of their own, so every other file of the corpus stays byte-identical (SPEAKERS.TXT
  gains the speakers with SUBSET adapt-dev) and the same corpus and seed write the same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mtspeech.data.new_voices import TRAIN_VARIANTS, write_added_split
from mtspeech.data.synth import SynthConfig, corpus_config, plan_corpus
from mtspeech.data.voices import LANGUAGES, Speaker, draw_conversion

ADAPT_DEV_SPLIT = "adapt-dev"
ADAPT_DEV_SEED = 36
# espeak-ng !v variants that drive the Klatt formant synthesiser and that no split uses (test-voices
# has adam, benjamin, caleb, david and edward; edward2 is a sibling of edward, so left out).
ADAPT_DEV_VARIANTS = ("announcer", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6")
_SPEAKER_IDS = range(30000, 40000)
_CHAPTERS = range(500000, 600000)
_RENDER_OFFSET = 3_000_000  # render indices (noise seeds) past test-voices', train-voices' and test-final's


def plan_adapt_dev(cfg: SynthConfig, speakers: int = 12, per_speaker: int = 30,
                   seed: int = ADAPT_DEV_SEED) -> tuple[list[Speaker], list]:
    """(speakers, [(utt_id, speaker, text)]) of adapt-dev for the corpus `cfg` plans: speakers
    alternate F, M; the first half plain `ADAPT_DEV_VARIANTS`, the rest WORLD conversions of
    `TRAIN_VARIANTS`; each reads `per_speaker` distinct sentences of the `dev` split."""
    most = min(len(ADAPT_DEV_VARIANTS), len(TRAIN_VARIANTS)) * len(LANGUAGES)
    if not 2 <= speakers <= most or per_speaker < 2:
        raise ValueError(f"{ADAPT_DEV_SPLIT}: 2 to {most} speakers of >= 2 utterances "
                         f"(got {speakers} x {per_speaker})")
    _, plan, _ = plan_corpus(cfg)
    dev_sentences = sorted({text for _, _, text in plan["dev"]})
    if per_speaker > len(dev_sentences):
        raise ValueError(f"{ADAPT_DEV_SPLIT}: {per_speaker} sentences per speaker, but the dev split has "
                         f"{len(dev_sentences)}")
    rng = random.Random(f"{cfg.seed}-{ADAPT_DEV_SPLIT}-{seed}")  # its own stream: the corpus's plan is untouched
    ids = rng.sample(_SPEAKER_IDS, speakers)
    chapters = rng.sample(_CHAPTERS, speakers)
    klatt, converted = list(ADAPT_DEV_VARIANTS), list(TRAIN_VARIANTS)
    rng.shuffle(klatt)
    rng.shuffle(converted)
    n_klatt = speakers // 2
    new, items, used = [], [], set()
    for i, (spk_id, chapter) in enumerate(zip(ids, chapters)):
        sex = "FM"[i % 2]
        # every variant once before any repeats, each (accent, variant) once
        variant = klatt[i % len(klatt)] if i < n_klatt else converted[(i - n_klatt) % len(converted)]
        lang = rng.choice([lang for lang in LANGUAGES if (lang, variant) not in used])
        used.add((lang, variant))
        pitch = rng.randint(35, 75) if sex == "F" else rng.randint(25, 60)
        conversion = None if i < n_klatt else draw_conversion(rng, sex, sex)
        speaker = Speaker(str(spk_id), sex, lang, variant, pitch, rng.randint(140, 185), False, "espeak-ng",
                          conversion)
        new.append(speaker)
        for k, text in enumerate(rng.sample(dev_sentences, per_speaker)):
            items.append((f"{spk_id}-{chapter}-{k:04d}", speaker, text))
    return new, items


def synthesize_adapt_dev(root: str | Path, speakers: int = 12, per_speaker: int = 30, seed: int = ADAPT_DEV_SEED,
                         jobs: int | None = None, progress: bool = True) -> dict:
    """Write `root/adapt-dev` next to the corpus at `root` (only its synth.json and SPEAKERS.TXT
    are read); returns (and stores in `root/adapt_dev.json`) the seed, size and speakers."""
    root = Path(root)
    cfg = corpus_config(root)
    new, items = plan_adapt_dev(cfg, speakers, per_speaker, seed)
    summary = write_added_split(root, cfg, ADAPT_DEV_SPLIT, new, items, _RENDER_OFFSET, jobs, progress,
                                render_seed=seed)
    summary = {"seed": seed, **summary}
    (root / f"{ADAPT_DEV_SPLIT.replace('-', '_')}.json").write_text(json.dumps(summary, indent=2) + "\n",
                                                                    encoding="utf-8")
    return summary
