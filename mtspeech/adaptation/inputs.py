"""The k utterances of one voice that `mtspeech adapt` learns from, read and checked.

Two ways in, as `evaluate` and `transcribe` take them: a JSON Lines manifest of the project's
format (`--manifest`, narrowed to one voice with `--speaker`), or audio files, each with its
transcript in a `.txt` file of the same name beside it (LibriSpeech-style text, normalised as
`prepare` normalises training text). Everything that would make adaptation learn nothing, or
learn from the wrong thing, is refused before a step runs, with the file or utterance named:
no transcript (where the set trains on the words: all but speaker-embedding), unreadable audio,
a rate below `MIN_SAMPLE_RATE`, k larger than what was given, several voices mixed, audio too
short for its transcript under CTC.
"""

from __future__ import annotations

import random
from pathlib import Path

import soundfile
import torch

from mtspeech.adaptation.param_sets import AdaptationError
from mtspeech.data.audio import AudioError, load_audio
from mtspeech.data.dataset import Batch, Example, collate_batch
from mtspeech.data.manifest import ManifestError, Utterance, read_manifest
from mtspeech.text.normalize import normalize_text

# Audio below 8 kHz holds nothing above 4 kHz: most of what tells phones apart is gone, and
# resampling cannot bring it back. Telephone audio (8 kHz) is the lowest the server takes too
# (`serve.limits.Limits.min_sample_rate`); higher rates are resampled with the one resampler.
MIN_SAMPLE_RATE = 8000


def read_checked(path: str | Path) -> list[Utterance]:
    """Every utterance of manifest `path`; AdaptationError if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise AdaptationError(f"manifest {path} does not exist")
    try:
        return read_manifest(path)
    except (ManifestError, UnicodeDecodeError) as e:
        raise AdaptationError(f"manifest {path} is malformed: {e}") from None


def from_manifest(path: str | Path, speaker: str | None = None) -> list[Utterance]:
    """The utterances of `path` (of `speaker` only, when given); one voice or an error."""
    path = Path(path)
    utts = read_checked(path)
    if speaker is not None:
        utts = [u for u in utts if u.speaker == speaker]
        if not utts:
            raise AdaptationError(f"manifest {path} has no utterance of speaker {speaker!r}")
    voices = sorted({u.speaker for u in utts if u.speaker is not None})
    if len(voices) > 1:
        raise AdaptationError(f"manifest {path} holds {len(voices)} voices ({', '.join(voices[:5])}...); "
                              "adaptation is to one voice: pick it with --speaker")
    if not utts:
        raise AdaptationError(f"manifest {path} holds no utterance")
    return utts


def from_files(files: list[str | Path], need_transcripts: bool = True) -> list[Utterance]:
    """One utterance per audio file, its transcript read from `<file without suffix>.txt`
    (without `need_transcripts`, a file without one gets no text)."""
    utts = []
    missing = []
    for f in map(Path, files):
        transcript = f.with_suffix(".txt")
        if not transcript.is_file():
            if need_transcripts:
                missing.append(str(transcript))
            else:
                utts.append(Utterance(id=f.stem, audio=str(f), duration=0.0, text=None))
            continue
        text = normalize_text(transcript.read_text(encoding="utf-8"))
        utts.append(Utterance(id=f.stem, audio=str(f), duration=0.0, text=text or None))
    if missing:
        raise AdaptationError(f"no transcripts: adaptation needs the words of every file; missing "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (one .txt per audio file)")
    return utts


def choose(utts: list[Utterance], k: int | None, seed: int, need_text: bool = True) -> list[Utterance]:
    """`k` of `utts` drawn with `seed` (all of them, in order, when k is None); with
    `need_text`, every utterance given must have its transcript."""
    untranscribed = [u.id for u in utts if not (u.text and u.text.strip())]
    if untranscribed and need_text:
        raise AdaptationError(f"no transcripts for {len(untranscribed)} utterance(s) ({', '.join(untranscribed[:5])}): "
                              "adaptation trains on the words, give each utterance its text")
    if k is None:
        return list(utts)
    if k < 1:
        raise AdaptationError(f"--k must be at least 1, got {k}")
    if k > len(utts):
        raise AdaptationError(f"--k {k} is larger than the {len(utts)} utterance(s) given")
    return random.Random(seed).sample(utts, k)


def load_waves(utts: list[Utterance], sample_rate: int) -> list[torch.Tensor]:
    """Each utterance's audio (S,) at `sample_rate`, resampled with soxr from any rate of at
    least MIN_SAMPLE_RATE; refuses unreadable files and lower rates, naming the file."""
    wavs = []
    for u in utts:
        try:
            rate = soundfile.info(u.audio).samplerate
        except Exception as e:  # noqa: BLE001  libsndfile raises several types for foreign files
            raise AdaptationError(f"{u.audio} (utterance {u.id}): cannot read audio ({e})") from None
        if rate < MIN_SAMPLE_RATE:
            raise AdaptationError(f"{u.audio} (utterance {u.id}): sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz; "
                                  "too little of the speech band is left to adapt to. Record at 8 kHz or more")
        try:
            wavs.append(load_audio(u.audio, sample_rate))
        except AudioError as e:
            raise AdaptationError(f"{e.path} (utterance {u.id}): {e.reason}") from None
    return wavs


def batches(utts: list[Utterance], wavs: list[torch.Tensor], task, max_batch_seconds: float,
            sample_rate: int) -> list[Batch]:
    """The utterances as padded batches of at most `max_batch_seconds` of padded audio each, with
    the ASR task's targets (`task.collate`: the tokenizer the model was trained with)."""
    order = sorted(range(len(utts)), key=lambda i: len(wavs[i]))
    groups: list[list[int]] = [[]]
    for i in order:
        longest = max(len(wavs[j]) for j in groups[-1] + [i]) / sample_rate
        if groups[-1] and longest * (len(groups[-1]) + 1) > max_batch_seconds:
            groups.append([])
        groups[-1].append(i)
    out = [collate_batch([Example(utts[i], wavs[i], {task.name: task}) for i in g]) for g in groups]
    empty = [u.id for b in out for u, n in zip(b.utts, b.targets[task.name].lens) if int(n) == 0]
    if empty:
        raise AdaptationError(f"transcripts of {', '.join(empty[:5])} have no unit the model's tokenizer knows")
    return out


def check_lengths(batch: Batch, enc_lens: torch.Tensor, task_name: str) -> None:
    """Refuse utterances whose encoder frames (B,) cannot hold their transcript under CTC (one
    frame per unit and a blank between repeats): their loss would be skipped, silently."""
    t = batch.targets[task_name]
    for i, u in enumerate(batch.utts):
        units = t.values[i, : t.lens[i]].tolist()
        need = len(units) + sum(a == b for a, b in zip(units, units[1:]))
        if int(enc_lens[i]) < need:
            raise AdaptationError(f"utterance {u.id} ({u.audio}): {int(enc_lens[i])} encoder frames cannot hold "
                                  f"its {len(units)} transcript units; is the transcript for this audio?")
