"""Import a lhotse CutSet (as icefall and NeMo recipes write them) into one JSON Lines manifest.

`mtspeech prepare lhotse CUTS.jsonl.gz OUT_DIR [--split NAME]` reads the cuts lazily with
lhotse's own reader and writes

    OUT_DIR/<split>.jsonl            one `Utterance` a line (docs/interfaces.md)
    OUT_DIR/<split>.rejected.txt     `reason<TAB>cut id<TAB>detail` for every skipped cut
    OUT_DIR/<split>.summary.json     utterances, hours, speakers, OOV counts, rejections

Each cut becomes one utterance: audio = the recording's file, duration = the cut's, text =
the supervisions' texts in time order joined and normalised like `prepare librispeech`,
speaker (and sex) = the supervisions' when they all agree, phones from CMUdict as in
`prepare librispeech`, speech = the supervisions' spans relative to the cut (VAD labels).

Our manifest has no offset into a longer file and the dataset reads whole files, so only a
cut that *is* its whole recording can be imported. Cuts we cannot represent faithfully are
logged, counted and skipped, never guessed at: a slice of a longer recording, several
channels, a source that is not a file, audio transforms other than resampling, mixed or
padding cuts, cuts without a recording or without supervisions, duplicate ids and missing
audio files. A file that is not a CutSet, or one where every cut is skipped, is an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from pathlib import Path

from mtspeech.data.lexicon import OOV_POLICIES, Lexicon
from mtspeech.data.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)

# A cut this close to its recording's start and end counts as the whole file: tools round
# durations, and half a 10 ms feature hop moves no frame label.
WHOLE_FILE_TOLERANCE_S = 0.005
# The loader resamples every file to the model's rate, so a lhotse resample changes nothing.
_HARMLESS_TRANSFORMS = {"Resample"}
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


class Skip(Exception):
    """A cut that cannot become an utterance: `reason` is a short tag counted in the summary."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def default_split(path: str | os.PathLike) -> str:
    """`cuts_dev.jsonl.gz` → `cuts_dev`: the file name without its JSON Lines suffixes."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl"):
        name = name.removesuffix(suffix)
    return name


def _audio_path(cut) -> str:
    """The one file a cut's audio is read from; `Skip` if the cut is not its whole file."""
    from lhotse.cut import MonoCut

    if not isinstance(cut, MonoCut):
        raise Skip("not_mono", f"{type(cut).__name__} (mixed, padding or multi-channel cuts are not files)")
    if not cut.has_recording:
        raise Skip("no_recording", "the cut has no recording (features only?)")
    rec = cut.recording
    if len(rec.sources) != 1 or rec.num_channels != 1:
        raise Skip("multi_channel", f"recording {rec.id} has {rec.num_channels} channels in "
                                    f"{len(rec.sources)} source(s); the loader would average them")
    source = rec.sources[0]
    if source.type != "file":
        raise Skip("not_a_file", f"recording {rec.id} source type is {source.type!r}, not 'file'")
    names = [t["name"] if isinstance(t, dict) else type(t).__name__ for t in rec.transforms or []]
    changed = [n for n in names if n not in _HARMLESS_TRANSFORMS]
    if changed:
        raise Skip("transformed", f"recording {rec.id} has audio transforms {changed} (speed, volume, ...)")
    if cut.start > WHOLE_FILE_TOLERANCE_S or abs(cut.end - rec.duration) > WHOLE_FILE_TOLERANCE_S:
        raise Skip("slice", f"cut covers {cut.start:.3f}-{cut.end:.3f} s of the {rec.duration:.3f} s "
                            f"recording {rec.id}; manifests hold whole files (no offsets)")
    path = Path(source.source)  # lhotse resolves relative paths against the working directory
    if not path.is_file():
        raise Skip("missing_audio", f"{path} does not exist")
    return str(path.resolve())


def _one(values: list):
    """The single value every supervision agrees on, or None (unknown or disagreeing)."""
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 and None not in distinct else None


def cut_to_utterance(cut, out_dir: Path, lexicon: Lexicon) -> Utterance:
    """One lhotse cut → `Utterance` with audio relative to `out_dir`; raises `Skip`.

    Text is None unless every supervision has one (a partial transcript is a wrong label);
    speaker and sex are None when supervisions disagree (the speaker task masks the row).
    """
    from mtspeech.text.normalize import normalize_text

    audio = _audio_path(cut)
    sups = sorted(cut.supervisions, key=lambda s: (s.start, s.end))
    if not sups:
        raise Skip("no_supervision", "the cut has no supervision (no text, speaker or speech labels)")
    texts = [s.text for s in sups]
    text = None
    if all(t is not None for t in texts):
        text = " ".join(w for w in (normalize_text(t) for t in texts) if w) or None
    # Supervision times are relative to the cut; clip to it and merge overlaps (two talkers).
    speech: list[list[float]] = []
    for s in sups:
        start, end = max(0.0, s.start), min(cut.duration, s.end)
        if end <= start:
            continue
        if speech and start <= speech[-1][1]:
            speech[-1][1] = max(speech[-1][1], round(end, 4))
        else:
            speech.append([round(start, 4), round(end, 4)])
    sex = _one([_SEX.get(str(s.gender).lower()) if s.gender else None for s in sups])
    return Utterance(
        id=cut.id,
        audio=os.path.relpath(audio, out_dir.resolve()),
        duration=round(cut.duration, 4),
        text=text,
        speaker=_one([s.speaker for s in sups]),
        sex=sex,
        phones=lexicon.phones(text) if text else None,
        speech=speech,
    )


def import_cuts(
    cuts_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str | None = None,
    oov: str = "g2p",
    progress: bool = True,
) -> dict:
    """Write `out_dir/<split>.jsonl` from a lhotse CutSet file, streaming it cut by cut.

    Returns the summary also written to `out_dir/<split>.summary.json`. Raises ValueError
    (naming the file) if it is not a readable JSON Lines CutSet or no cut could be imported.
    """
    from lhotse import CutSet
    from lhotse.cut import Cut
    from tqdm import tqdm

    cuts_path, out = Path(cuts_path), Path(out_dir)
    split = split or default_split(cuts_path)
    if not cuts_path.is_file():
        raise ValueError(f"{cuts_path}: no such file")
    if ".jsonl" not in cuts_path.suffixes:
        raise ValueError(f"{cuts_path}: expected a JSON Lines CutSet (*.jsonl or *.jsonl.gz); convert one "
                         "with CutSet.from_file(path).to_file('cuts.jsonl.gz')")
    out.mkdir(parents=True, exist_ok=True)
    lexicon = Lexicon(oov)
    rejected: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    speakers: set[str] = set()
    kept = Counter()

    def utterances():
        count = 0
        try:
            for cut in tqdm(CutSet.from_jsonl_lazy(cuts_path), desc=split, unit="cut", disable=not progress):
                count += 1
                if not isinstance(cut, Cut):
                    raise ValueError(f"{cuts_path}: item {count} is a {type(cut).__name__}, not a cut; "
                                     "build cuts with lhotse's CutSet.from_manifests(recordings, supervisions)")
                try:
                    if cut.id in seen:
                        raise Skip("duplicate_id", "an earlier cut has the same id")
                    utt = cut_to_utterance(cut, out, lexicon)
                except Skip as e:
                    rejected.append((e.reason, cut.id, e.detail))
                    continue
                seen.add(cut.id)
                kept["utterances"] += 1
                kept["seconds"] += utt.duration
                kept["without_text"] += utt.text is None
                kept["without_speaker"] += utt.speaker is None
                speakers.add(utt.speaker)
                yield utt
        except (ValueError, KeyError, TypeError, OSError, EOFError) as e:
            if str(cuts_path) in str(e):
                raise
            raise ValueError(f"{cuts_path}: cannot read item {count + 1} as a lhotse cut ({type(e).__name__}: {e})") from e

    manifest = out / f"{split}.jsonl"
    write_manifest(manifest, utterances())
    with open(out / f"{split}.rejected.txt", "w", encoding="utf-8") as f:
        for reason, cut_id, detail in rejected:
            f.write(f"{reason}\t{cut_id}\t{detail}\n")
    reasons = dict(Counter(r[0] for r in rejected))
    for reason, n in reasons.items():
        example = next(r for r in rejected if r[0] == reason)
        log.warning("%s: skipped %d cut(s) as %s, e.g. %s (%s)", cuts_path, n, reason, example[1], example[2])
    if not kept["utterances"]:
        manifest.unlink()
        raise ValueError(f"{cuts_path}: no cut could be imported (skipped: {reasons or 'the file is empty'}); "
                         f"reasons per cut in {out / f'{split}.rejected.txt'}")
    summary = {
        "cuts": str(cuts_path.resolve()), "split": split, "manifest": str(manifest),
        "utterances": kept["utterances"], "hours": round(kept["seconds"] / 3600, 4),
        "speakers": len(speakers - {None}),
        "without_text": kept["without_text"], "without_speaker": kept["without_speaker"],
        "rejected": reasons, "oov": lexicon.summary(),
    }
    (out / f"{split}.summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("imported %d utterances (%.2f h) from %s into %s; skipped %s",
             summary["utterances"], summary["hours"], cuts_path, manifest, reasons)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cuts", metavar="CUTS.jsonl.gz", help="lhotse CutSet in JSON Lines (e.g. librispeech_cuts_dev-clean.jsonl.gz)")
    parser.add_argument("out", metavar="OUT_DIR", help="output folder for <split>.jsonl")
    parser.add_argument("--split", default=None,
                        help="manifest name (default: the cuts file name without .jsonl.gz)")
    parser.add_argument("--oov", choices=OOV_POLICIES, default="g2p",
                        help="words missing from CMUdict: espeak-ng letter-to-sound (g2p) or "
                             "phones=None for the utterance (missing); default %(default)s")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    try:
        summary = import_cuts(args.cuts, args.out, split=args.split, oov=args.oov, progress=not args.no_progress)
    except ValueError as e:
        log.error("%s", e)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
