"""The demo corpus's cast: who speaks, on which engine, voice and conversion, in which split.

Speakers come from three engines (`mtspeech.data.engines`) and from WORLD voice conversion
of their voices (`engines/world.py`); a converted voice is a speaker of its own.

- **train** (and dev, test: seen speakers reading held-out sentences): espeak-ng voices on
  `SEEN_VARIANTS`, flite's awb and rms, and conversions of both.
- **test-unseen**: espeak-ng voices on `UNSEEN_VARIANTS`, a timbre training never heard.
- **test-engine**: `TEST_ENGINE` (festival), an engine training never heard, and conversions
  of its voices. Chosen once, for three reasons: festival's voices are built in ways no
  training voice is (diphone concatenation of recorded speech with LPC residuals, and an
  HMM (HTS) voice), so the split measures whether the model learned speech rather than a
  synthesizer; the people recorded for festival's kal and slt voices are also recorded for
  flite's kal16 and slt, which are therefore left out of training too, so the split's
  speakers are unheard people; and festival is the slowest engine (~0.4 s a call), which a
  small split keeps off the main job's clock. Nothing is ever tuned on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mtspeech.data.engines import festival
from mtspeech.data.engines.world import Conversion

TEST_ENGINE = "festival"
# Accents and voice variants (espeak-ng-data/voices/!v). Held-out variants are never used by
# a training speaker, so test-unseen voices differ in timbre, not only in pitch and rate.
LANGUAGES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd",
             "en-gb-x-gbclan", "en-us-nyc")
SEEN_VARIANTS = {"F": ("f1", "f2", "f3", "f4", "belinda"), "M": ("m1", "m2", "m3", "m4", "m5", "m6")}
UNSEEN_VARIANTS = {"F": ("f5", "Annie"), "M": ("m7", "m8")}
# flite voices training may hear: not kal16 and slt, whose recorded people festival's voices are.
TRAIN_FLITE_VOICES = {"awb": "M", "rms": "M"}


@dataclass(frozen=True)
class Speaker:
    id: str
    sex: str
    language: str   # espeak-ng accent ("" for the other engines)
    variant: str    # espeak-ng !v variant, or the engine's voice name
    pitch: int      # espeak-ng -p (0-99); 0 for engines without pitch control
    rate: int       # words per minute (espeak-ng -s; the others stretch durations by 170 / rate)
    seen: bool      # heard in training
    engine: str = "espeak-ng"
    conversion: Conversion | None = None

    @property
    def engine_voice(self) -> str:
        """The voice as the engine names it."""
        return f"{self.language}+{self.variant}" if self.engine == "espeak-ng" else self.variant

    @property
    def voice(self) -> str:
        """The engine's voice, plus the conversion's tag if converted (`awb~f1.70w1.15b1.20`)."""
        return self.engine_voice + (f"~{self.conversion.tag}" if self.conversion else "")

    @property
    def subset(self) -> str:
        """The split whose speaker this is: train, test-unseen or test-engine."""
        return "train" if self.seen else ("test-engine" if self.engine == TEST_ENGINE else "test-unseen")


def draw_conversion(rng: random.Random, base_sex: str, sex: str) -> Conversion:
    """Warps that turn a `base_sex` voice into a clearly different `sex` one: same sex, F0 at
    least 10 % away and formants within 8 %; across sexes, F0 and formants moved by the
    typical female/male ratios (~1.7 and ~1.15)."""
    if base_sex == sex:
        f0 = rng.choice([rng.uniform(0.78, 0.9), rng.uniform(1.1, 1.28)])
        warp = rng.uniform(0.92, 1.08)
    elif sex == "F":
        f0, warp = rng.uniform(1.55, 1.9), rng.uniform(1.1, 1.2)
    else:
        f0, warp = rng.uniform(0.5, 0.64), rng.uniform(0.83, 0.9)
    return Conversion(round(f0, 2), round(warp, 2), round(rng.uniform(0.7, 1.4), 2))


def make_speakers(rng: random.Random, n_seen: int, n_unseen: int, n_flite: int, n_converted: int,
                  n_test_engine: int) -> list[Speaker]:
    """The cast, in order: `n_seen` training speakers (the first `n_flite` on flite, the next
    `n_converted` converted espeak-ng voices, the rest espeak-ng), `n_unseen` test-unseen
    espeak-ng speakers and `n_test_engine` test-engine speakers (each festival voice once,
    then conversions of them). Sexes alternate F, M within each group; (voice, pitch, rate)
    are distinct."""
    if n_seen < 1 or n_unseen < 1 or n_test_engine < 1:
        raise ValueError(f"need at least one seen, one unseen and one test-engine speaker (got {n_seen}, "
                         f"{n_unseen}, {n_test_engine})")
    if n_flite + n_converted > n_seen:
        raise ValueError(f"flite ({n_flite}) and converted ({n_converted}) speakers exceed the {n_seen} seen ones")
    ids = rng.sample(range(100, 10000), n_seen + n_unseen + n_test_engine)
    pools = {}
    for seen, variants in ((True, SEEN_VARIANTS), (False, UNSEEN_VARIANTS)):
        for sex in ("F", "M"):
            combos = [(lang, v) for v in variants[sex] for lang in LANGUAGES]
            rng.shuffle(combos)
            pools[seen, sex] = combos

    def espeak_voice(seen: bool, sex: str) -> tuple[str, str]:
        if not pools[seen, sex]:
            raise ValueError("too many espeak-ng speakers requested: voice combinations exhausted")
        return pools[seen, sex].pop()

    def espeak_pitch(sex: str) -> int:
        return rng.randint(35, 75) if sex == "F" else rng.randint(25, 60)

    speakers: list[Speaker] = []
    natural_used: set[str] = set()
    for i in range(n_seen):
        spk_id, sex = str(ids[i]), "FM"[i % 2]
        if i < n_flite:
            voice = sorted(TRAIN_FLITE_VOICES)[(i // 2) % len(TRAIN_FLITE_VOICES)]
            base_sex = TRAIN_FLITE_VOICES[voice]
            natural = base_sex == sex and voice not in natural_used
            if natural:
                natural_used.add(voice)
            conversion = None if natural else draw_conversion(rng, base_sex, sex)
            speakers.append(Speaker(spk_id, sex, "", voice, 0, rng.randint(150, 190), True, "flite", conversion))
        else:
            lang, variant = espeak_voice(True, sex)
            conversion = draw_conversion(rng, sex, sex) if i < n_flite + n_converted else None
            speakers.append(Speaker(spk_id, sex, lang, variant, espeak_pitch(sex), rng.randint(140, 185), True,
                                    "espeak-ng", conversion))
    for i in range(n_unseen):
        sex = "FM"[i % 2]
        lang, variant = espeak_voice(False, sex)
        speakers.append(Speaker(str(ids[n_seen + i]), sex, lang, variant, espeak_pitch(sex),
                                rng.randint(140, 185), False))
    bases = sorted(festival.VOICES)
    for i in range(n_test_engine):
        spk_id = str(ids[n_seen + n_unseen + i])
        voice = bases[i % len(bases)]
        base_sex = festival.VOICES[voice]
        if i < len(bases):  # each voice as it is first
            speakers.append(Speaker(spk_id, base_sex, "", voice, 0, rng.randint(150, 190), False, TEST_ENGINE))
        else:
            sex = "FM"[i % 2]
            speakers.append(Speaker(spk_id, sex, "", voice, 0, rng.randint(150, 190), False, TEST_ENGINE,
                                    draw_conversion(rng, base_sex, sex)))
    return speakers
