"""Noisy twins of the synthetic test splits: the same utterances at a fixed SNR, for robustness.

`mtspeech synth --out DIR --noisy-twins` writes, next to `test` and `test-unseen`,

    DIR/test-snr10/...  DIR/test-snr0/...  DIR/test-unseen-snr10/...  DIR/test-unseen-snr0/...

and test-voices-snr10/0 when the corpus has test-voices (`mtspeech synth --voices-only`),
with the same speaker/chapter layout, ids, transcripts and speech-segment sidecars: only the
audio differs. Utterance k of a split gets noise kind k mod 4 of (white, pink, brown,
babble), so each kind covers a quarter of each twin; babble mixes four other utterances of
the same split. The SNR is measured over the speech segments (`mtspeech.data.augment`, the
same code as training augmentation).

It also writes a reverberant twin of each, `test-room`, `test-unseen-room` (and
`test-voices-room`): every utterance through its own room, RT60 drawn from 0.3-0.9 s and the
direct-to-reverberant ratio as a random shoebox room of that RT60 gives it
(`augment.shoebox_drr_db`; `benchmarks/rir_match.py` measures these responses against
pyroomacoustics' image-source rooms), no noise. The speech segments stay those of the dry
speech: the direct path arrives at t = 0, and the tail after a segment is the room, not the
talker. Output depends only on the clean corpus and `seed`.

`make_phone_twins` writes telephone twins of `dev` and `test`, `dev-phone` and `test-phone`:
every utterance through `telephone.narrowband` (8 kHz, 300-3400 Hz, a call level drawn per
utterance, μ-law), stored as the 8 kHz 16-bit PCM a telephone gateway sends. Reading one
(`audio.load_audio`) resamples it to 16 kHz with the one resampler, as the server resamples an
8 kHz stream, so evaluating the twin scores exactly what the server would be given. Same ids,
transcripts, speakers and speech segments; only the audio (and its rate) differ.
"""

from __future__ import annotations

import json
import logging
import shutil
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from mtspeech.data.augment import (add_at_snr, babble, colored_noise, reverberate, room_impulse_response,
                                   shoebox_drr_db, speech_mask)
from mtspeech.data.librispeech import read_segments_txt
from mtspeech.data.telephone import BAND_HZ, LEVEL_DBOV, PHONE_RATE, draw_level_dbov, narrowband

log = logging.getLogger(__name__)

TWIN_SPLITS = ("test", "test-unseen")
OPTIONAL_TWIN_SPLITS = ("test-voices",)  # twinned when the corpus has them
TWIN_SNRS_DB = (10.0, 0.0)
TWIN_KINDS = ("white", "pink", "brown", "babble")
BABBLE_VOICES = 4
ROOM_RT60_S = (0.3, 0.9)
ROOM_SEED = 0x200  # the rooms' stream, apart from the noise's [seed, snr index, utterance]
PHONE_TWIN_SPLITS = ("dev", "test")  # dev: for choices, so test-phone stays a test
PHONE_SEED = 0x300  # the call levels' stream


def twin_name(split: str, snr_db: float) -> str:
    """`test` at 10 dB → `test-snr10`."""
    return f"{split}-snr{snr_db:g}"


def room_twin_name(split: str) -> str:
    """`test` → `test-room`."""
    return f"{split}-room"


def phone_twin_name(split: str) -> str:
    """`test` → `test-phone`."""
    return f"{split}-phone"


def phone_level_dbov(seed: int, split: str, index: int) -> float:
    """The call level of utterance `index` (sorted file order) of `split`'s telephone twin: a
    stream per split, so dev-phone's levels do not mirror test-phone's."""
    return draw_level_dbov(np.random.default_rng([seed, PHONE_SEED, zlib.crc32(split.encode()), index]))


def _copy_sidecars(folder: Path, twin: Path) -> None:
    for sidecar in [*folder.rglob("*.trans.txt"), *folder.rglob("*.segments.txt")]:
        shutil.copyfile(sidecar, twin / sidecar.relative_to(folder))


def _write(path: Path, wav: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.clip(wav, -1.0, 1.0), rate, subtype="PCM_16")


def make_room_twin(corpus: Path, split: str, seed: int = 0, progress: bool = True) -> dict:
    """Write `split`'s reverberant twin (module docstring); returns its RT60 and DRR ranges."""
    folder, name = corpus / split, room_twin_name(split)
    rt60s, drrs = [], []
    for i, path in enumerate(tqdm(sorted(folder.rglob("*.flac")), desc=name, disable=not progress, leave=False)):
        rng = np.random.default_rng([seed, ROOM_SEED, i])
        rt60 = float(rng.uniform(*ROOM_RT60_S))
        drr = shoebox_drr_db(rt60, rng)
        wav, rate = soundfile.read(path, dtype="float64")
        wet = reverberate(wav, room_impulse_response(rt60, rate, rng, drr))
        peak = np.abs(wet).max()
        _write(corpus / name / path.relative_to(folder), wet * min(1.0, 0.99 / peak) if peak > 0 else wet, rate)
        rt60s.append(rt60)
        drrs.append(drr)
    _copy_sidecars(folder, corpus / name)
    return {"utterances": len(rt60s), "rt60_s": [round(min(rt60s), 3), round(max(rt60s), 3)],
            "drr_db": [round(min(drrs), 1), round(max(drrs), 1)]}


def make_phone_twin(corpus: Path, split: str, seed: int = 0, progress: bool = True) -> dict:
    """Write `split`'s telephone twin (module docstring); returns its size and call-level range."""
    folder, name = corpus / split, phone_twin_name(split)
    files = sorted(folder.rglob("*.flac"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .flac files; synthesize the corpus first (mtspeech synth)")
    levels = []
    for i, path in enumerate(tqdm(files, desc=name, disable=not progress, leave=False)):
        level = phone_level_dbov(seed, split, i)
        wav, rate = soundfile.read(path, dtype="float64")
        _write(corpus / name / path.relative_to(folder), narrowband(wav, rate, level), PHONE_RATE)
        levels.append(level)
    _copy_sidecars(folder, corpus / name)
    return {"utterances": len(files), "sample_rate": PHONE_RATE,
            "level_dbov": [round(min(levels), 1), round(max(levels), 1)]}


def make_phone_twins(corpus: str | Path, splits: Sequence[str] = PHONE_TWIN_SPLITS, seed: int = 0,
                     progress: bool = True, summary_file: str | None = "phone_twins.json") -> dict:
    """Write the telephone twins of `splits` into `corpus`; returns {twin split: summary}, also
    written (with the seed and the channel's settings) to `corpus/summary_file` unless None."""
    corpus = Path(corpus)
    summary = {phone_twin_name(split): make_phone_twin(corpus, split, seed, progress) for split in splits}
    if summary_file is not None:
        (corpus / summary_file).write_text(json.dumps(
            {"seed": seed, "band_hz": list(BAND_HZ), "level_dbov": list(LEVEL_DBOV), "twins": summary}, indent=2) + "\n")
    log.info("wrote telephone twins %s into %s", sorted(summary), corpus)
    return summary


def make_noisy_twins(corpus: str | Path, splits: Sequence[str] | None = None,
                     snrs_db: Sequence[float] = TWIN_SNRS_DB, seed: int = 0, progress: bool = True,
                     summary_file: str | None = "noisy_twins.json") -> dict:
    """Write the twins of `splits` (None: TWIN_SPLITS and whichever OPTIONAL_TWIN_SPLITS the
    corpus has, and their room twins) into `corpus`; returns {twin split: {kind: utterances},
    room twin: {utterances, rt60_s, drr_db}}, also written to `corpus/summary_file` (None: not
    written; test-final keeps its twins' summary in its own file)."""
    corpus = Path(corpus)
    if splits is None:
        splits = [*TWIN_SPLITS, *(s for s in OPTIONAL_TWIN_SPLITS if (corpus / s).is_dir())]
    summary: dict[str, dict[str, int]] = {}
    for split in splits:
        folder = corpus / split
        files = sorted(folder.rglob("*.flac"))
        if not files:
            raise FileNotFoundError(f"{folder}: no .flac files; synthesize the corpus first (mtspeech synth)")
        segments: dict[str, list] = {}
        for sidecar in folder.rglob("*.segments.txt"):
            segments.update(read_segments_txt(sidecar, []))
        for s, snr in enumerate(snrs_db):
            name = twin_name(split, snr)
            counts = dict.fromkeys(TWIN_KINDS, 0)
            for i, path in enumerate(tqdm(files, desc=name, disable=not progress, leave=False)):
                kind = TWIN_KINDS[i % len(TWIN_KINDS)]
                rng = np.random.default_rng([seed, s, i])
                wav, rate = soundfile.read(path, dtype="float64")
                if kind == "babble":
                    others = [j for j in rng.permutation(len(files)) if j != i][:BABBLE_VOICES]
                    noise = babble(len(wav), [torch.from_numpy(soundfile.read(files[j], dtype="float32")[0])
                                              for j in others])
                else:
                    noise = colored_noise(kind, len(wav), rng)
                noisy = add_at_snr(wav, noise, snr, speech_mask(len(wav), segments.get(path.stem), rate))
                _write(corpus / name / path.relative_to(folder), noisy, rate)
                counts[kind] += 1
            _copy_sidecars(folder, corpus / name)
            summary[name] = counts
        summary[room_twin_name(split)] = make_room_twin(corpus, split, seed, progress)
    if summary_file is not None:
        (corpus / summary_file).write_text(json.dumps(
            {"seed": seed, "snrs_db": list(snrs_db), "kinds": list(TWIN_KINDS), "room_rt60_s": list(ROOM_RT60_S),
             "twins": summary}, indent=2) + "\n")
    log.info("wrote noisy twins %s into %s", sorted(summary), corpus)
    return summary
