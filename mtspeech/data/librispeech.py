"""Scan a LibriSpeech-layout tree into one JSON Lines manifest per split.

`mtspeech prepare librispeech ROOT --out DIR` reads `ROOT/SPLIT/SPK/CHAP/` folders (real
LibriSpeech subsets such as train-clean-100 or test-other, or the synthetic corpus of
`mtspeech synth`) and writes

    DIR/<split>.jsonl           one `Utterance` a line (docs/interfaces.md)
    DIR/<split>.rejected.txt    `reason<TAB>file<TAB>detail` for every skipped item
    DIR/summary.json            utterances, hours, speakers, OOV counts, rejections

Labels: text from `*.trans.txt` (re-normalised, idempotent on LibriSpeech), speaker from the
folder, sex from `SPEAKERS.TXT`, phones from CMUdict (`Lexicon`, OOV policy `g2p` or
`missing`), speech segments from a `*.segments.txt` sidecar when present (exact, synthetic
corpus) or else from the energy detector in `mtspeech.data.segments`. Broken inputs (corrupt,
empty or unreadable audio, transcripts without audio, audio without transcripts) are logged,
counted and skipped: a prepare run never dies on a bad file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

from mtspeech.data.lexicon import OOV_POLICIES, Lexicon, espeak_phones
from mtspeech.data.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".flac", ".wav")


@dataclass(frozen=True)
class _Item:
    id: str
    audio: str
    text: str
    speaker: str
    speech: list[list[float]] | None  # from a sidecar; None = compute energy segments


def read_speakers_txt(path: str | os.PathLike) -> dict[str, str]:
    """Speaker id → sex ("F"/"M") from a LibriSpeech SPEAKERS.TXT (`;` lines are comments)."""
    sexes: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|", 4)]  # NAME may itself contain '|'
        if len(fields) >= 2 and fields[1].upper() in ("F", "M"):
            sexes[fields[0]] = fields[1].upper()
    return sexes


def find_splits(root: Path) -> dict[str, Path]:
    """Split name → folder, for folders holding SPK/CHAP/*.trans.txt (also under ROOT/LibriSpeech)."""
    found = {}
    for base in (root, root / "LibriSpeech"):
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if d.is_dir() and next(d.glob("*/*/*.trans.txt"), None) is not None:
                found.setdefault(d.name, d)
    return found


def read_segments_txt(path: Path, rejected: list) -> dict[str, list[list[float]]]:
    """Sidecar `ID start-end ...` lines → id → segments; malformed lines are logged and skipped."""
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            segs = [[float(a), float(b)] for a, b in (p.split("-") for p in parts[1:])]
            if any(b < a for a, b in segs):
                raise ValueError("segment ends before it starts")
        except ValueError as e:
            rejected.append(("bad_segments", f"{path}:{lineno}", str(e)))
            log.warning("%s:%d: malformed segments line (%s); using energy segments", path, lineno, e)
            continue
        out[parts[0]] = segs
    return out


def _scan_split(folder: Path, rejected: list) -> list[_Item]:
    """Pair transcripts with audio in every chapter folder of one split (text normalised)."""
    from mtspeech.text.normalize import normalize_text

    items = []
    for chapter in sorted(p for p in folder.glob("*/*") if p.is_dir()):
        texts: dict[str, str] = {}
        for trans in sorted(chapter.glob("*.trans.txt")):
            for lineno, line in enumerate(trans.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                utt_id, _, text = line.strip().partition(" ")
                if not normalize_text(text):
                    rejected.append(("empty_transcript", f"{trans}:{lineno}", utt_id))
                    continue
                texts[utt_id] = normalize_text(text)
        segments: dict[str, list[list[float]]] = {}
        for side in sorted(chapter.glob("*.segments.txt")):
            segments.update(read_segments_txt(side, rejected))
        audio = {p.stem: p for p in sorted(chapter.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES}
        for utt_id in sorted(set(texts) | set(audio)):
            if utt_id not in audio:
                rejected.append(("missing_audio", str(chapter / utt_id), "transcript line without audio"))
            elif utt_id not in texts:
                rejected.append(("missing_transcript", str(audio[utt_id]), "audio without transcript line"))
            else:
                speaker = chapter.parent.name
                items.append(_Item(utt_id, str(audio[utt_id]), texts[utt_id], speaker, segments.get(utt_id)))
    return items


def _probe(item: _Item) -> tuple[_Item, float | None, list | None, str | None]:
    """(item, duration_s, speech, reject reason) — runs in worker processes."""
    import numpy as np
    import soundfile as sf

    from mtspeech.data.segments import energy_segments

    try:
        if os.path.getsize(item.audio) == 0:
            return item, None, None, "empty: zero-byte file"
        info = sf.info(item.audio)
        if info.frames <= 0:
            return item, None, None, "empty: no samples"
        duration = info.frames / info.samplerate
        speech = item.speech
        if speech is None:  # no exact truth: decode and detect speech by energy
            wav, rate = sf.read(item.audio, dtype="float32", always_2d=True)
            if wav.shape[0] == 0:
                return item, None, None, "empty: no samples decoded"
            speech = energy_segments(wav.mean(axis=1), rate)
            if not np.isfinite(wav).all():
                return item, None, None, "corrupt: non-finite samples"
        return item, duration, speech, None
    except Exception as e:  # soundfile raises several types for broken files
        return item, None, None, f"unreadable: {type(e).__name__}: {e}"


def prepare_librispeech(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    splits: list[str] | None = None,
    oov: str = "g2p",
    jobs: int | None = None,
    progress: bool = True,
) -> dict:
    """Write `out_dir/<split>.jsonl` for every split found under root (or the named ones).

    Returns the summary dict also written to `out_dir/summary.json`. Raises ValueError if a
    requested split does not exist or nothing is found; bad files never raise.
    """
    from tqdm import tqdm

    root, out = Path(root), Path(out_dir)
    available = find_splits(root)
    if not available:
        raise ValueError(f"no LibriSpeech splits (SPLIT/SPEAKER/CHAPTER/*.trans.txt) under {root}")
    wanted = list(available) if not splits else list(splits)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise ValueError(f"split(s) {unknown} not found under {root}; found {sorted(available)}")
    speakers_txt = next((p for p in (root / "SPEAKERS.TXT", root / "LibriSpeech" / "SPEAKERS.TXT") if p.exists()), None)
    sexes = read_speakers_txt(speakers_txt) if speakers_txt else {}
    if speakers_txt is None:
        log.warning("no SPEAKERS.TXT under %s: sex labels will be missing", root)

    lexicon = Lexicon(oov)
    n_jobs = jobs or os.cpu_count() or 1
    pool = Pool(n_jobs) if n_jobs > 1 else None
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"root": str(root.resolve()), "splits": {}}
    all_speakers: set[str] = set()
    try:
        for split in wanted:
            rejected: list[tuple[str, str, str]] = []
            items = _scan_split(available[split], rejected)
            if oov == "g2p" and pool is not None:  # run espeak for OOV types in parallel, once each
                oov_types = sorted({w for it in items for w in it.text.split() if w not in lexicon})
                for w, p in zip(oov_types, pool.map(espeak_phones, oov_types, chunksize=32)):
                    lexicon.extra[w] = p
            results = (pool.imap(_probe, items, chunksize=16) if pool else map(_probe, items))
            utts = []
            for item, duration, speech, reason in tqdm(results, total=len(items), desc=split,
                                                       unit="utt", disable=not progress):
                if reason is not None:
                    rejected.append((reason.split(":")[0], item.audio, reason))
                    continue
                audio = os.path.relpath(Path(item.audio).resolve(), out.resolve())
                utts.append(Utterance(
                    id=item.id, audio=audio, duration=round(duration, 4), text=item.text,
                    speaker=item.speaker, sex=sexes.get(item.speaker),
                    phones=lexicon.phones(item.text), speech=speech,
                ))
            write_manifest(out / f"{split}.jsonl", utts)
            all_speakers |= {u.speaker for u in utts}
            with open(out / f"{split}.rejected.txt", "w", encoding="utf-8") as f:
                for reason, path, detail in rejected:
                    log.warning("%s: rejected %s (%s)", split, path, detail)
                    f.write(f"{reason}\t{path}\t{detail}\n")
            summary["splits"][split] = {
                "utterances": len(utts),
                "hours": round(sum(u.duration for u in utts) / 3600, 4),
                "speakers": len({u.speaker for u in utts}),
                "rejected": dict(Counter(r[0] for r in rejected)),
            }
    except BaseException:
        # Ctrl-C reaches the workers too; a task they drop is never finished, so close() +
        # join() would wait forever (seen: prepare hung after Ctrl-C). Stop them instead.
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    per = summary["splits"].values()
    summary.update({
        "utterances": sum(s["utterances"] for s in per),
        "hours": round(sum(s["hours"] for s in per), 4),
        "speakers": len(all_speakers),
        "oov": lexicon.summary(),
        "rejected": dict(sum((Counter(s["rejected"]) for s in per), Counter())),
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("prepared %d utterances (%.2f h, %d speakers) into %s; rejected %s",
             summary["utterances"], summary["hours"], summary["speakers"], out, summary["rejected"])
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="LibriSpeech root (holding SPEAKERS.TXT and split folders)")
    parser.add_argument("--out", required=True, help="output folder for <split>.jsonl manifests")
    parser.add_argument("--splits", nargs="+", default=None, help="splits to prepare (default: all found)")
    parser.add_argument("--oov", choices=OOV_POLICIES, default="g2p",
                        help="words missing from CMUdict: espeak-ng letter-to-sound (g2p) or "
                             "phones=None for the utterance (missing); default %(default)s")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    summary = prepare_librispeech(args.root, args.out, splits=args.splits, oov=args.oov,
                                  jobs=args.jobs, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0
