"""The demo corpus's final test set, `test-final`: made once, scored once, never tuned on.

Every other test split of the corpus (test, test-unseen, test-voices, their noisy and room
twins) has informed a recipe choice (issue 30), so none of them is a clean final test any
more. `mtspeech synth --out DIR --final-only` adds, next to a corpus already there,

    DIR/test-final/SPK/CHAP/...       16 speakers x 16 sentences no other split reads
    DIR/test-final-snr10/, -snr0/     the same utterances in white, pink, brown and babble noise
    DIR/test-final-room/              the same utterances through simulated rooms
    DIR/test_final.json               seed, speakers, sentences and the twins' summary

- **sentences**: fortunes sentences that no split reads (not train's, train-voices' spare
  ones, dev's, test's nor test-engine's), each read once, and closed-vocabulary like `test`:
  every word is in a sentence `train` reads, so the split measures the demo on what it was
  taught, not out-of-vocabulary guessing;
- **voices**: speakers on the seen engines (espeak-ng and flite; never festival, the held-out
  test-engine), in the training cast's engine mix, on voices no other split has: espeak-ng
  variants no split uses (`FINAL_VARIANTS`), WORLD conversions of them, and new WORLD
  conversions of flite's awb and rms (whose plain voices are training speakers); speaker ids
  20000-29999 and chapters 400000-499999 collide with nothing;
- **seed**: `FINAL_SEED` (30, the issue's number), documented here and in docs/data.md, draws
  the plan, the audio's noise and the twins. A run with the same corpus and seed writes the
  same bytes; another seed is another final test set, and says so in test_final.json.

`recipes/synthetic/run.sh` neither makes nor scores it; `recipes/synthetic/final.sh` does,
once, at the end.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mtspeech.data.new_voices import write_added_split
from mtspeech.data.sentences import sentence_pool
from mtspeech.data.synth import SynthConfig, corpus_config, plan_corpus, spare_training_sentences
from mtspeech.data.voices import LANGUAGES, TRAIN_FLITE_VOICES, Speaker, draw_conversion

FINAL_SPLIT = "test-final"
FINAL_SEED = 30
# espeak-ng !v variants that no other split uses: not training's, test-unseen's, test-voices'
# nor train-voices' (voices.py, new_voices.py). Several are numbered siblings of test-voices
# variants (Gene2, iven2-4, steph3, AnxiousAndy of Andy), held out like them, so no trained
# model heard them; none is a sibling of a training variant (RicishayMax2-3 are left out).
# Klatt voices (klatt*, announcer, edward2) and effects (robots, whispers, croak, Demonic,
# Tweaky, fast) are left out: the split measures the demo on the sound it was trained on.
# Each speaker's sex, and so its pitch range, is assigned, not taken from the variant.
FINAL_VARIANTS = ("AnxiousAndy", "Gene2", "Mr serious", "Storm", "iven2", "iven3", "iven4", "steph3")
_SPEAKER_IDS = range(20000, 30000)
_CHAPTERS = range(400000, 500000)
_RENDER_OFFSET = 2_000_000  # render indices (noise seeds) past test-voices' and train-voices'


def final_sentences(cfg: SynthConfig) -> list[str]:
    """The pool's sentences that no split of the corpus `cfg` plans reads (nor train-voices'
    spare ones) and whose every word a `train` sentence has; in the pool's (sorted) order."""
    _, plan, _ = plan_corpus(cfg)
    read = {text for items in plan.values() for _, _, text in items} | set(spare_training_sentences(cfg))
    vocab = {w for _, _, text in plan["train"] for w in text.split()}
    return [s for s in sentence_pool(cfg.min_words, cfg.max_words, cfg.vocab_words)
            if s not in read and all(w in vocab for w in s.split())]


def plan_final(cfg: SynthConfig, speakers: int = 16, per_speaker: int = 16,
               seed: int = FINAL_SEED) -> tuple[list[Speaker], list]:
    """(speakers, [(utt_id, speaker, text)]) of test-final for the corpus `cfg` plans: half the
    speakers female; `cfg.flite_share` of them new conversions of flite's training voices,
    `cfg.converted_share` conversions of `FINAL_VARIANTS`, the rest plain `FINAL_VARIANTS`;
    `speakers x per_speaker` distinct sentences of `final_sentences`, each read once."""
    most = len(FINAL_VARIANTS) * len(LANGUAGES)
    if not 2 <= speakers <= most or per_speaker < 1:
        raise ValueError(f"{FINAL_SPLIT}: 2 to {most} speakers (one per variant and accent) of >= 1 "
                         f"utterance (got {speakers} x {per_speaker})")
    pool = final_sentences(cfg)
    if speakers * per_speaker > len(pool):
        raise ValueError(f"{FINAL_SPLIT}: {speakers} x {per_speaker} sentences wanted, but only {len(pool)} "
                         "closed-vocabulary sentences are read by no split: fewer speakers or utterances, "
                         "or a larger corpus (--hours)")
    rng = random.Random(f"{cfg.seed}-{FINAL_SPLIT}-{seed}")  # its own stream: the corpus's plan is untouched
    texts = rng.sample(pool, speakers * per_speaker)
    ids = rng.sample(_SPEAKER_IDS, speakers)
    chapters = rng.sample(_CHAPTERS, speakers)
    n_flite, n_converted = round(cfg.flite_share * speakers), round(cfg.converted_share * speakers)
    taken_voices = {s.voice for s in plan_corpus(cfg)[0]}
    variants = list(FINAL_VARIANTS)
    rng.shuffle(variants)
    new, items, used = [], [], set()
    for i, (spk_id, chapter) in enumerate(zip(ids, chapters)):
        sex = "FM"[i % 2]
        rate = rng.randint(150, 190) if i < n_flite else rng.randint(140, 185)
        if i < n_flite:  # flite voices only as conversions: their plain selves are training speakers
            voice = sorted(TRAIN_FLITE_VOICES)[i % len(TRAIN_FLITE_VOICES)]
            speaker = Speaker(str(spk_id), sex, "", voice, 0, rate, False, "flite",
                              draw_conversion(rng, TRAIN_FLITE_VOICES[voice], sex))
            while speaker.voice in taken_voices:  # never a conversion the corpus already has
                speaker = Speaker(str(spk_id), sex, "", voice, 0, rate, False, "flite",
                                  draw_conversion(rng, TRAIN_FLITE_VOICES[voice], sex))
        else:
            variant = variants[(i - n_flite) % len(variants)]  # every variant once before any repeats
            lang = rng.choice([lang for lang in LANGUAGES if (lang, variant) not in used])
            used.add((lang, variant))
            pitch = rng.randint(35, 75) if sex == "F" else rng.randint(25, 60)
            conversion = draw_conversion(rng, sex, sex) if i < n_flite + n_converted else None
            speaker = Speaker(str(spk_id), sex, lang, variant, pitch, rate, False, "espeak-ng", conversion)
        taken_voices.add(speaker.voice)
        new.append(speaker)
        for k in range(per_speaker):
            items.append((f"{spk_id}-{chapter}-{k:04d}", speaker, texts[i * per_speaker + k]))
    return new, items


def synthesize_final(root: str | Path, speakers: int = 16, per_speaker: int = 16, seed: int = FINAL_SEED,
                     jobs: int | None = None, progress: bool = True) -> dict:
    """Write `root/test-final` and its noisy and room twins next to the corpus at `root`;
    returns (and stores in `root/test_final.json`) the seed, the split's size, its speakers and
    the twins' summary. The corpus's other files, noisy_twins.json included, are untouched
    (SPEAKERS.TXT gains the new speakers)."""
    from mtspeech.data.noisy_twins import make_noisy_twins  # torch: not for `mtspeech synth --help`

    root = Path(root)
    cfg = corpus_config(root)
    new, items = plan_final(cfg, speakers, per_speaker, seed)
    summary = write_added_split(root, cfg, FINAL_SPLIT, new, items, _RENDER_OFFSET, jobs, progress,
                                render_seed=seed)
    twins = make_noisy_twins(root, splits=[FINAL_SPLIT], seed=seed, progress=progress, summary_file=None)
    summary = {"seed": seed, **summary, "sentences": len({text for _, _, text in items}), "twins": twins}
    (root / f"{FINAL_SPLIT.replace('-', '_')}.json").write_text(json.dumps(summary, indent=2) + "\n",
                                                                encoding="utf-8")
    return summary
