"""The embedded demo corpus: espeak-ng speech in the LibriSpeech layout, with exact VAD truth.

`mtspeech synth --out DIR` writes

    DIR/SPEAKERS.TXT                              LibriSpeech's format (`;` comments)
    DIR/synth.json                                config, per-speaker voices, split sizes
    DIR/SPLIT/SPK/CHAP/SPK-CHAP-UUUU.flac         16 kHz mono 16-bit FLAC
    DIR/SPLIT/SPK/CHAP/SPK-CHAP.trans.txt         `ID TRANSCRIPT`
    DIR/SPLIT/SPK/CHAP/SPK-CHAP.segments.txt      `ID start-end start-end ...` (seconds)

for SPLIT in train, dev, test (speakers seen in training, sentences never in train) and
test-unseen (held-out voices, the test sentences). Text comes from Debian's fortunes files,
normalised and kept when 4-16 words long and fully in CMUdict; dev/test sentences are chosen
so every word also occurs in some training sentence. The demo is therefore a closed-
vocabulary task on purpose: a tiny CPU model can reach a low CER on it, and the test /
test-unseen pair isolates speaker generalisation (same sentences, new voices).

`--noisy-twins` also writes test and test-unseen at 10 and 0 dB SNR (white, pink, brown and
babble noise; `mtspeech/data/noisy_twins.py`). `--voices-only` adds test-voices to a corpus:
24 more held-out voices on voice variants no other split uses (`mtspeech/data/new_voices.py`);
`--twins-only` after it makes its noisy twins too. `--train-voices-only` adds train-voices:
30 more training speakers on yet other variants, reading training sentences.

Each utterance is assembled from 1-3 phrases, each synthesised separately, trimmed of its
leading/trailing silence and placed at known offsets with random pauses around and between
them; those placements are the speech segments. Optional white noise at `--noise-snr` dB
(relative to the speech power). Output bytes depend only on (seed, hours, speakers, ...),
never on `--jobs`: every utterance draws from its own `default_rng([seed, index])`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import random
import re
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from mtspeech.data.geometry import SAMPLE_RATE
from mtspeech.data.resample import resample

log = logging.getLogger(__name__)

ESPEAK_RATE = 22050
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("fortunes", "literature", "riddles")
SPLITS = ("train", "dev", "test", "test-unseen")

# Accents and voice variants (espeak-ng-data/voices/!v). Held-out variants are never used by
# a training speaker, so test-unseen voices differ in timbre, not only in pitch and rate.
LANGUAGES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd",
             "en-gb-x-gbclan", "en-us-nyc")
SEEN_VARIANTS = {"F": ("f1", "f2", "f3", "f4", "belinda"), "M": ("m1", "m2", "m3", "m4", "m5", "m6")}
UNSEEN_VARIANTS = {"F": ("f5", "Annie"), "M": ("m7", "m8")}


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesise. Split sizes are fractions of `hours`; train gets the rest."""

    hours: float = 1.5
    seed: int = 0
    speakers: int = 32          # in total, including the held-out ones
    unseen_speakers: int = 4    # speakers (on held-out voices) only in test-unseen
    noise_snr_db: float | None = 30.0
    dev_fraction: float = 0.07
    test_fraction: float = 0.07
    unseen_fraction: float = 0.07
    min_words: int = 4
    max_words: int = 16
    vocab_words: int | None = 1000  # keep sentences within the pool's N most frequent words
    held_out_sentences: float = 0.1  # dev and test each get at most this share of the pool
    jobs: int | None = None     # worker processes (None = os.cpu_count()); not in the output
    progress: bool = True


@dataclass(frozen=True)
class Speaker:
    id: str
    sex: str
    language: str
    variant: str
    pitch: int   # espeak -p (0-99)
    rate: int    # espeak -s (words per minute)
    seen: bool

    @property
    def voice(self) -> str:
        return f"{self.language}+{self.variant}"


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


# ---------------------------------------------------------------- text

@functools.lru_cache(maxsize=4)
def load_sentences(min_words: int = 4, max_words: int = 16) -> tuple[str, ...]:
    """Normalised fortunes sentences of min..max words, all words in CMUdict; sorted, unique."""
    from mtspeech.data.lexicon import cmu_dictionary
    from mtspeech.text.normalize import normalize_text

    lexicon = cmu_dictionary()
    out: set[str] = set()
    for name in FORTUNE_FILES:
        path = FORTUNES_DIR / name
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", text, flags=re.M):
            entry = re.split(r"\n\s*--", entry)[0]  # drop "-- Author" attributions
            for sentence in re.split(r"(?<=[.!?;:])\s+", " ".join(entry.split())):
                words = normalize_text(sentence).split()
                if min_words <= len(words) <= max_words and all(w in lexicon for w in words):
                    out.add(" ".join(words))
    if not out:
        raise RuntimeError(f"no usable sentences under {FORTUNES_DIR}; install Debian's "
                           "'fortunes' package (apt-get install fortunes)")
    return tuple(sorted(out))


def sentence_pool(cfg: "SynthConfig") -> tuple[str, ...]:
    """The sentences a corpus draws from: `load_sentences`, cut to a closed vocabulary of
    the `cfg.vocab_words` most frequent words (None: no cut). A smaller vocabulary means
    each word, and each sentence, is heard more often and from several voices, like the
    1000-word DARPA Resource Management task; it also stops a speaker head from naming the
    speaker by the sentence, since sentences are no longer tied to one reader."""
    sentences = load_sentences(cfg.min_words, cfg.max_words)
    if cfg.vocab_words is None:
        return sentences
    counts = Counter(w for s in sentences for w in s.split())
    top = {w for w, _ in counts.most_common(cfg.vocab_words)}
    kept = tuple(s for s in sentences if all(w in top for w in s.split()))
    if len(kept) < 20:
        raise RuntimeError(f"only {len(kept)} sentences fit a {cfg.vocab_words}-word vocabulary; raise vocab_words")
    return kept


def split_sentences(sentences: tuple[str, ...] | list[str], n_dev: int, n_test: int,
                    rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    """(train, dev, test) sentence lists; every dev/test word also occurs in train.

    Greedy: walk the shuffled pool and hold a sentence out only if each of its words still
    has another occurrence left in the pool. At most half the pool is held out.
    """
    pool = list(sentences)
    rng.shuffle(pool)
    counts = Counter(w for s in pool for w in s.split())
    held: list[str] = []
    budget = min(n_dev + n_test, len(pool) // 2)
    for s in pool:
        if len(held) >= budget:
            break
        need = Counter(s.split())
        if all(counts[w] > k for w, k in need.items()):
            counts.subtract(need)
            held.append(s)
    held_set = set(held)
    train = [s for s in pool if s not in held_set]
    # Share what was found in proportion, leaving each of dev and test at least one sentence.
    n_dev_real = min(max(1, round(len(held) * n_dev / (n_dev + n_test))), len(held) - 1)
    return train, held[:max(n_dev_real, 0)], held[max(n_dev_real, 0):]


# ---------------------------------------------------------------- speakers and plan

def make_speakers(cfg: SynthConfig, rng: random.Random) -> list[Speaker]:
    """`cfg.speakers` speakers with distinct (voice, pitch, rate); the last `unseen` held out."""
    n_unseen = cfg.unseen_speakers
    n_seen = cfg.speakers - n_unseen
    if n_seen < 1 or n_unseen < 1:
        raise ValueError(f"need at least one seen and one unseen speaker (speakers={cfg.speakers}, "
                         f"unseen_speakers={cfg.unseen_speakers})")
    ids = rng.sample(range(100, 10000), cfg.speakers)
    pools = {}
    for seen, variants in ((True, SEEN_VARIANTS), (False, UNSEEN_VARIANTS)):
        for sex in ("F", "M"):
            combos = [(lang, v) for v in variants[sex] for lang in LANGUAGES]
            rng.shuffle(combos)
            pools[seen, sex] = combos
    speakers = []
    for i in range(cfg.speakers):
        seen = i < n_seen
        sex = "FM"[(i if seen else i - n_seen) % 2]
        pool = pools[seen, sex]
        if not pool:
            raise ValueError(f"too many speakers requested ({cfg.speakers}): voice combinations exhausted")
        lang, variant = pool.pop()
        pitch = rng.randint(35, 75) if sex == "F" else rng.randint(25, 60)
        speakers.append(Speaker(str(ids[i]), sex, lang, variant, pitch, rng.randint(140, 185), seen))
    return speakers


def _estimate_seconds(text: str, rate: int) -> float:
    # Measured on the default corpus: trimmed espeak speech lasts ~0.84 x words x 60 / rate,
    # and the pauses add ~1.17 s (lead 0.4 + trail 0.4 + 0.8 inner breaks x 0.475 s).
    return 0.84 * len(text.split()) * 60.0 / rate + 1.17


def _plan_split(split: str, target_s: float, speakers: list[Speaker], sentences: list[str],
                rng: random.Random, chapters: dict) -> list[tuple[str, Speaker, str]]:
    """(utt_id, speaker, text) for one split, round-robin over speakers until target_s."""
    plan = []
    total = 0.0
    order = list(sentences)
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

def espeak(text: str, speaker: Speaker) -> np.ndarray:
    """float32 (S,) at 16 kHz: espeak-ng's rendering of `text` in the speaker's voice, resampled
    with the one resampler (`mtspeech.data.resample`, soxr) that training and serving use."""
    out = subprocess.run(
        ["espeak-ng", "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(speaker.rate),
         "--stdout", text.lower()],
        capture_output=True, check=True,
    ).stdout
    import soundfile as sf

    wav, rate = sf.read(io.BytesIO(out), dtype="float32")
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng returned {rate} Hz audio, expected {ESPEAK_RATE}")
    return resample(wav, ESPEAK_RATE, SAMPLE_RATE)


def trim(wav: np.ndarray, rel_threshold: float = 0.002) -> np.ndarray:
    """Drop leading/trailing samples quieter than `rel_threshold` × peak (espeak's silence)."""
    loud = np.nonzero(np.abs(wav) > rel_threshold * np.abs(wav).max())[0]
    return wav[loud[0]: loud[-1] + 1] if loud.size else wav[:0]


def _phrases(words: list[str], rng: np.random.Generator) -> list[str]:
    """Split a sentence into 1-3 phrases at random word boundaries (never empty phrases)."""
    n_breaks = min(int(rng.choice([0, 0, 1, 1, 2])), len(words) - 1)
    cuts = sorted(rng.choice(np.arange(1, len(words)), size=n_breaks, replace=False).tolist()) if n_breaks else []
    bounds = [0, *cuts, len(words)]
    return [" ".join(words[a:b]) for a, b in zip(bounds, bounds[1:])]


def render(job: _Job) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """int16 (S,) audio and speech segments as [start, end) sample offsets."""
    rng = np.random.default_rng([job.seed, job.index])
    pieces = [trim(espeak(p, job.speaker)) for p in _phrases(job.text.split(), rng)]
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
    text)], sentences per split). `synthesize_corpus` renders it; benchmarks replay it to know
    which words each utterance holds without rendering audio."""
    rng = random.Random(cfg.seed)
    speakers = make_speakers(cfg, rng)
    seen = [s for s in speakers if s.seen]
    unseen = [s for s in speakers if not s.seen]

    total_s = cfg.hours * 3600.0
    target = {"dev": cfg.dev_fraction * total_s, "test": cfg.test_fraction * total_s,
              "test-unseen": cfg.unseen_fraction * total_s}
    target["train"] = max(total_s - sum(target.values()), 1.0)
    sentences = sentence_pool(cfg)
    mean_s = float(np.mean([_estimate_seconds(s, 160) for s in sentences]))
    # Enough sentences for each held-out split (20% spare), but at most a share of the pool
    # so training keeps most of it; held-out sentences are then read by several speakers.
    cap = max(1, int(cfg.held_out_sentences * len(sentences)))
    n_dev, n_test = (min(cap, max(1, int(1.2 * target[k] / mean_s) + 1)) for k in ("dev", "test"))
    train_s, dev_s, test_s = split_sentences(sentences, n_dev, n_test, rng)
    if not (train_s and dev_s and test_s):
        raise RuntimeError(f"sentence pool too small to split ({len(sentences)} sentences of "
                           f"{cfg.min_words}-{cfg.max_words} words)")

    chapters: dict = {}
    plan = {
        "train": _plan_split("train", target["train"], seen, train_s, rng, chapters),
        "dev": _plan_split("dev", target["dev"], seen, dev_s, rng, chapters),
        "test": _plan_split("test", target["test"], seen, test_s, rng, chapters),
        "test-unseen": _plan_split("test-unseen", target["test-unseen"], unseen, test_s, rng, chapters),
    }
    return speakers, plan, {"train": len(train_s), "dev": len(dev_s), "test": len(test_s)}


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
            "speakers": [dataclasses.asdict(s) | {"voice": s.voice} for s in speakers]}
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("synthesised %.3f h, %d utterances, %d speakers into %s", summary["hours"],
             len(jobs), len(speakers), out)
    return summary


def render_jobs(jobs: list[_Job], n_jobs: int | None, progress: bool) -> dict[str, tuple[float, list]]:
    """Render every job's FLAC; returns utt_id → (seconds, speech segments in seconds).
    Bytes depend on each job alone, never on `n_jobs` (None: every core)."""
    from tqdm import tqdm

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
        "; Synthetic speakers (espeak-ng voices), in LibriSpeech's SPEAKERS.TXT format.",
        "; SUBSET is where the speaker was trained on (train) or held out (test-unseen);",
        "; seen speakers also read the dev and test chapters.",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    for s in sorted(speakers, key=lambda s: int(s.id)):
        subset = "train" if s.seen else "test-unseen"
        name = f"espeak {s.voice} p{s.pitch} s{s.rate}"
        lines.append(f"{s.id:<5}| {s.sex} | {subset:<16} | {seconds[s.id] / 60:5.2f} | {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
