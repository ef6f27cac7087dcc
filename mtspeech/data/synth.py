"""The embedded demo corpus: many voices on three engines, in the LibriSpeech layout, with exact VAD truth.

`mtspeech synth --out DIR` writes

    DIR/SPEAKERS.TXT                              LibriSpeech's format (`;` comments)
    DIR/synth.json                                config, per-speaker voices, split sizes
    DIR/SPLIT/SPK/CHAP/SPK-CHAP-UUUU.flac         16 kHz mono 16-bit FLAC
    DIR/SPLIT/SPK/CHAP/SPK-CHAP.trans.txt         `ID TRANSCRIPT`
    DIR/SPLIT/SPK/CHAP/SPK-CHAP.segments.txt      `ID start-end start-end ...` (seconds)

for SPLIT in train, dev, test (speakers seen in training, sentences never in train),
test-unseen (held-out espeak-ng voices, the test sentences) and test-engine (an engine
training never hears, festival, and conversions of its voices: who speaks where is
`mtspeech/data/voices.py`). Speakers are espeak-ng, flite and festival voices and WORLD
conversions of them (`mtspeech/data/engines/`). Text is `mtspeech/data/sentences.py`: about
15 000 fortunes sentences; training reads each sentence at most once until its hours are
spent, those that carry the dev/test words first, so dev and test stay closed-vocabulary;
test-engine reads the test sentences and as many sentences with words no read training
sentence has (open vocabulary).

`--noisy-twins` also writes test and test-unseen at 10 and 0 dB SNR (white, pink, brown and
babble noise; `mtspeech/data/noisy_twins.py`). `--voices-only` adds test-voices to a corpus:
24 more held-out voices on voice variants no other split uses (`mtspeech/data/new_voices.py`);
`--twins-only` after it makes its noisy twins too. `--train-voices-only` adds train-voices:
30 more training speakers on yet other variants, reading training sentences. `--final-only`
adds test-final, the final test set that nothing is tuned on (`mtspeech/data/final_test.py`).

Each utterance is assembled from 1-3 phrases, each synthesised separately (and converted, for
a converted voice), trimmed of its leading/trailing silence and placed at known offsets with
random pauses around and between them; those placements are the speech segments, exact for
every engine since the audio between them is digital silence before the noise is added.
Optional white noise at `--noise-snr` dB (relative to the speech power). Output bytes depend
only on (seed, hours, speakers, ...), never on `--jobs`: every utterance draws from its own
`default_rng([seed, index])`, and the engines are deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from mtspeech.data.engines import require
from mtspeech.data.geometry import SAMPLE_RATE
from mtspeech.data.phrase_audio import speak
from mtspeech.data.sentences import cover_first, oov_sentences, sentence_pool, split_sentences
from mtspeech.data.voices import Speaker, make_speakers

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test", "test-unseen", "test-engine")


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesise. Split sizes are fractions of `hours`; train gets the rest."""

    hours: float = 1.5
    seed: int = 0
    speakers: int = 32          # train and test-unseen speakers, including the held-out ones
    unseen_speakers: int = 4    # speakers (on held-out espeak-ng voices) only in test-unseen
    flite_share: float = 0.2    # of the seen speakers: flite voices (awb, rms) and their conversions
    converted_share: float = 0.2  # of the seen speakers: WORLD conversions of espeak-ng voices
    test_engine_speakers: int = 8  # test-engine: festival's 3 voices, then conversions of them
    noise_snr_db: float | None = 30.0
    dev_fraction: float = 0.07
    test_fraction: float = 0.07
    unseen_fraction: float = 0.07
    test_engine_fraction: float = 0.07
    min_words: int = 4
    max_words: int = 12
    vocab_words: int | None = None  # keep sentences within the pool's N most frequent words
    held_out_sentences: float = 0.1  # dev and test each get at most this share of the pool
    spare_sentences: int = 600  # unread training sentences kept for train-voices
    # Readers per training sentence. 1 (issue 35): the most distinct sentences for the hours.
    # The 301-sentence corpus read each by 3-4 speakers because with one reader a speaker
    # head learned to name the speaker by the sentence; with ~1000 sentences that shortcut
    # costs far more memorising, but if dev speaker accuracy drops, raise this.
    train_readings: int = 1
    jobs: int | None = None     # worker processes (None = os.cpu_count()); not in the output
    progress: bool = True


@dataclass(frozen=True)
class _Job:
    index: int
    split: str
    utt_id: str
    path: str
    text: str
    speaker: Speaker
    seed: int
    noise_snr_db: float | None


def cast(cfg: SynthConfig, rng: random.Random) -> list[Speaker]:
    """The corpus's speakers (`mtspeech.data.voices.make_speakers`) for `cfg`."""
    n_seen = cfg.speakers - cfg.unseen_speakers
    return make_speakers(rng, n_seen, cfg.unseen_speakers, round(cfg.flite_share * n_seen),
                         round(cfg.converted_share * n_seen), cfg.test_engine_speakers)


def _estimate_seconds(text: str, rate: int) -> float:
    # Measured on the default corpus: trimmed espeak speech lasts ~0.84 x words x 60 / rate,
    # and the pauses add ~1.17 s (lead 0.4 + trail 0.4 + 0.8 inner breaks x 0.475 s).
    return 0.84 * len(text.split()) * 60.0 / rate + 1.17


def _plan_split(split: str, target_s: float, speakers: list[Speaker], sentences: list[str],
                rng: random.Random, chapters: dict, keep_order: bool = False,
                readings: int = 1) -> list[tuple[str, Speaker, str]]:
    """(utt_id, speaker, text) for one split, round-robin over speakers until target_s; the
    sentences are read in a shuffled order (`keep_order`: in their order on the first pass,
    each by `readings` consecutive, so different, speakers)."""
    plan = []
    total = 0.0
    order = [s for s in sentences for _ in range(readings)]
    if not keep_order:
        rng.shuffle(order)
    counters: dict[str, int] = defaultdict(int)
    k = 0
    while total < target_s or not plan:
        if k and k % len(order) == 0:
            rng.shuffle(order)  # another pass over the sentences (train; held-out rarely)
        spk = speakers[k % len(speakers)]
        text = order[k % len(order)]
        if (spk.id, split) not in chapters:  # one chapter per (speaker, split), ids unique
            taken = set(chapters.values())
            chap = str(rng.randint(10000, 299999))
            while chap in taken:
                chap = str(rng.randint(10000, 299999))
            chapters[spk.id, split] = chap
        chap = chapters[spk.id, split]
        utt_id = f"{spk.id}-{chap}-{counters[spk.id]:04d}"
        counters[spk.id] += 1
        plan.append((utt_id, spk, text))
        total += _estimate_seconds(text, spk.rate)
        k += 1
        if split != "train" and k >= len(sentences) * len(speakers):
            break  # every held-out (speaker, sentence) pair used once
    return plan


# ---------------------------------------------------------------- audio

def _phrases(words: list[str], rng: np.random.Generator) -> list[str]:
    """Split a sentence into 1-3 phrases at random word boundaries (never empty phrases)."""
    n_breaks = min(int(rng.choice([0, 0, 1, 1, 2])), len(words) - 1)
    cuts = sorted(rng.choice(np.arange(1, len(words)), size=n_breaks, replace=False).tolist()) if n_breaks else []
    bounds = [0, *cuts, len(words)]
    return [" ".join(words[a:b]) for a, b in zip(bounds, bounds[1:])]


def render(job: _Job) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """int16 (S,) audio and speech segments as [start, end) sample offsets."""
    rng = np.random.default_rng([job.seed, job.index])
    pieces = [speak(p, job.speaker) for p in _phrases(job.text.split(), rng)]
    pieces = [p for p in pieces if p.size]
    gap = lambda lo, hi: int(rng.uniform(lo, hi) * SAMPLE_RATE)  # noqa: E731
    chunks, segments, pos = [], [], 0
    lead = gap(0.10, 0.70)
    chunks.append(np.zeros(lead, np.float32))
    pos = lead
    for i, p in enumerate(pieces):
        if i:
            pause = gap(0.25, 0.70)
            chunks.append(np.zeros(pause, np.float32))
            pos += pause
        chunks.append(p)
        segments.append((pos, pos + len(p)))
        pos += len(p)
    chunks.append(np.zeros(gap(0.10, 0.70), np.float32))
    wav = np.concatenate(chunks)
    wav *= rng.uniform(0.3, 0.8) / max(np.abs(wav).max(), 1e-6)
    if job.noise_snr_db is not None:
        speech = np.concatenate([wav[a:b] for a, b in segments])
        noise_power = float(np.mean(speech.astype(np.float64) ** 2)) / 10 ** (job.noise_snr_db / 10)
        wav = wav + rng.standard_normal(len(wav)).astype(np.float32) * np.float32(np.sqrt(noise_power))
    return np.clip(np.round(wav * 32767), -32768, 32767).astype(np.int16), segments


def _work(job: _Job) -> tuple[str, float, list[tuple[float, float]]]:
    import soundfile as sf

    audio, segments = render(job)
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(job.path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return job.utt_id, len(audio) / SAMPLE_RATE, [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in segments]


# ---------------------------------------------------------------- corpus

def plan_corpus(cfg: SynthConfig) -> tuple[list[Speaker], dict[str, list], dict[str, int]]:
    """The corpus's plan, drawn from `cfg.seed` alone: (speakers, split → [(utt_id, speaker,
    text)], distinct sentences per split). `synthesize_corpus` renders it; benchmarks replay
    it to know which words each utterance holds without rendering audio."""
    speakers, plan, counts, _ = _plan(cfg)
    return speakers, plan, counts


def spare_training_sentences(cfg: SynthConfig) -> list[str]:
    """`cfg.spare_sentences` training sentences that `train` does not read, for train-voices
    (`mtspeech.data.new_voices`): more distinct sentences at the same hours. They share no
    sentence with any other split, and test-engine's open-vocabulary words are not in them."""
    return _plan(cfg)[3]


def _plan(cfg: SynthConfig) -> tuple[list[Speaker], dict[str, list], dict[str, int], list[str]]:
    rng = random.Random(cfg.seed)
    speakers = cast(cfg, rng)
    by_subset = defaultdict(list)
    for spk in speakers:
        by_subset[spk.subset].append(spk)

    total_s = cfg.hours * 3600.0
    target = {"dev": cfg.dev_fraction * total_s, "test": cfg.test_fraction * total_s,
              "test-unseen": cfg.unseen_fraction * total_s, "test-engine": cfg.test_engine_fraction * total_s}
    target["train"] = max(total_s - sum(target.values()), 1.0)
    sentences = sentence_pool(cfg.min_words, cfg.max_words, cfg.vocab_words)
    mean_s = float(np.mean([_estimate_seconds(s, 160) for s in sentences]))
    # Enough sentences for each held-out split (20% spare), but at most a share of the pool
    # so training keeps most of it; held-out sentences are then read by several speakers.
    cap = max(1, int(cfg.held_out_sentences * len(sentences)))
    n_dev, n_test = (min(cap, max(1, int(1.2 * target[k] / mean_s) + 1)) for k in ("dev", "test"))
    train_s, dev_s, test_s = split_sentences(sentences, n_dev, n_test, rng)
    if not (train_s and dev_s and test_s):
        raise RuntimeError(f"sentence pool too small to split ({len(sentences)} sentences of "
                           f"{cfg.min_words}-{cfg.max_words} words)")
    # Training reads its sentences once each, those carrying dev/test words first.
    train_order = cover_first(train_s, dev_s + test_s)

    chapters: dict = {}
    if cfg.train_readings < 1:
        raise ValueError(f"train_readings={cfg.train_readings}: each training sentence needs >= 1 reader")
    plan = {"train": _plan_split("train", target["train"], by_subset["train"], train_order, rng, chapters,
                                 keep_order=True, readings=cfg.train_readings)}
    read = list(dict.fromkeys(text for _, _, text in plan["train"]))
    read_set = set(read)
    unread = [s for s in train_order if s not in read_set]
    spare, rest = unread[:cfg.spare_sentences], unread[cfg.spare_sentences:]
    # test-engine: the test sentences, and as many whose words training never reads (OOV).
    oov = oov_sentences(rest, read + spare, len(test_s))
    if not oov:
        raise RuntimeError("no sentence with out-of-vocabulary words left for test-engine: lower --hours")
    plan["dev"] = _plan_split("dev", target["dev"], by_subset["train"], dev_s, rng, chapters)
    plan["test"] = _plan_split("test", target["test"], by_subset["train"], test_s, rng, chapters)
    plan["test-unseen"] = _plan_split("test-unseen", target["test-unseen"], by_subset["test-unseen"], test_s,
                                      rng, chapters)
    plan["test-engine"] = _plan_split("test-engine", target["test-engine"], by_subset["test-engine"],
                                      test_s + oov, rng, chapters)
    counts = {"train": len(read), "dev": len(dev_s), "test": len(test_s), "test-engine-oov": len(oov)}
    return speakers, plan, counts, spare


def corpus_config(root: str | Path) -> SynthConfig:
    """The SynthConfig that wrote the corpus at `root` (from its synth.json)."""
    path = Path(root) / "synth.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: synthesize the corpus first (mtspeech synth --out {root})")
    saved = json.loads(path.read_text(encoding="utf-8"))["config"]
    return SynthConfig(**{f.name: saved[f.name] for f in dataclasses.fields(SynthConfig) if f.name in saved})


def synthesize_corpus(out_dir: str | os.PathLike, cfg: SynthConfig = SynthConfig()) -> dict:
    """Write the demo corpus under out_dir (see module docstring); returns the summary dict
    (also stored in `out_dir/synth.json`): per-split utterances/seconds/speakers, hours."""
    out = Path(out_dir)
    speakers, plan, sentence_counts = plan_corpus(cfg)
    jobs, index = [], 0
    for split in SPLITS:
        for utt_id, spk, text in plan[split]:
            chap = utt_id.split("-")[1]
            path = out / split / spk.id / chap / f"{utt_id}.flac"
            jobs.append(_Job(index, split, utt_id, str(path), text, spk, cfg.seed, cfg.noise_snr_db))
            index += 1

    results = render_jobs(jobs, cfg.jobs, cfg.progress)
    write_chapter_sidecars(jobs, results)

    seconds = defaultdict(float)
    split_stats = {s: {"utterances": 0, "seconds": 0.0, "speakers": set()} for s in SPLITS}
    for job in jobs:
        dur = results[job.utt_id][0]
        seconds[job.speaker.id] += dur
        st = split_stats[job.split]
        st["utterances"] += 1
        st["seconds"] += dur
        st["speakers"].add(job.speaker.id)
    _write_speakers_txt(out / "SPEAKERS.TXT", speakers, seconds)

    summary = {
        "hours": round(sum(seconds.values()) / 3600, 4),
        "speakers": len(speakers),
        "splits": {s: {"utterances": v["utterances"], "seconds": round(v["seconds"], 2),
                       "speakers": len(v["speakers"])} for s, v in split_stats.items()},
        "sentences": sentence_counts,
    }
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("jobs", "progress")}
    meta = {"config": config, "summary": summary,
            "speakers": [dataclasses.asdict(s) | {"voice": s.voice, "subset": s.subset} for s in speakers]}
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("synthesised %.3f h, %d utterances, %d speakers into %s", summary["hours"],
             len(jobs), len(speakers), out)
    return summary


def render_jobs(jobs: list[_Job], n_jobs: int | None, progress: bool) -> dict[str, tuple[float, list]]:
    """Render every job's FLAC; returns utt_id → (seconds, speech segments in seconds).
    Bytes depend on each job alone, never on `n_jobs` (None: every core)."""
    from tqdm import tqdm

    for engine, voice in sorted({(j.speaker.engine, j.speaker.engine_voice) for j in jobs}):
        require(engine, voice)  # a missing engine stops here, naming its Debian package
    n_jobs = n_jobs or os.cpu_count() or 1
    results: dict[str, tuple[float, list]] = {}
    bar = tqdm(total=len(jobs), desc="synth", unit="utt", disable=not progress)
    if n_jobs > 1:
        with Pool(n_jobs) as pool:
            for utt_id, dur, segs in pool.imap_unordered(_work, jobs, chunksize=8):
                results[utt_id] = (dur, segs)
                bar.update()
    else:
        for job in jobs:
            utt_id, dur, segs = _work(job)
            results[utt_id] = (dur, segs)
            bar.update()
    bar.close()
    return results


def write_chapter_sidecars(jobs: list[_Job], results: dict[str, tuple[float, list]]) -> None:
    """Transcripts and segment sidecars, one pair per chapter, lines sorted by id."""
    by_chapter: dict[Path, list[_Job]] = defaultdict(list)
    for job in jobs:
        by_chapter[Path(job.path).parent].append(job)
    for folder, chapter_jobs in by_chapter.items():
        chapter_jobs.sort(key=lambda j: j.utt_id)
        stem = chapter_jobs[0].utt_id.rsplit("-", 1)[0]
        (folder / f"{stem}.trans.txt").write_text(
            "".join(f"{j.utt_id} {j.text}\n" for j in chapter_jobs), encoding="utf-8")
        (folder / f"{stem}.segments.txt").write_text("".join(
            f"{j.utt_id} " + " ".join(f"{_fmt(a)}-{_fmt(b)}" for a, b in results[j.utt_id][1]) + "\n"
            for j in chapter_jobs), encoding="utf-8")


def _fmt(seconds: float) -> str:
    # Sample offsets / 16000 have at most 7 decimals: print them exactly (sample-accurate).
    return f"{seconds:.7f}".rstrip("0").rstrip(".")


def _write_speakers_txt(path: Path, speakers: list[Speaker], seconds: dict[str, float]) -> None:
    lines = [
        "; Synthetic speakers (espeak-ng, flite and festival voices, some converted through the",
        "; WORLD vocoder: VOICE~fF0wWARPbBREATH), in LibriSpeech's SPEAKERS.TXT format.",
        "; SUBSET is where the speaker was trained on (train) or held out (test-unseen: new",
        "; espeak-ng timbres; test-engine: an engine training never heard); seen speakers also",
        "; read the dev and test chapters.",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    for s in sorted(speakers, key=lambda s: int(s.id)):
        name = f"{s.engine} {s.voice} p{s.pitch} s{s.rate}"
        lines.append(f"{s.id:<5}| {s.sex} | {s.subset:<16} | {seconds[s.id] / 60:5.2f} | {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
