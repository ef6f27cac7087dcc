"""`mtspeech analyze`: word accuracy by how many training sentences contain the word.

Why the phone head decodes words better than the ASR head: the ASR head must learn to spell
each word, so it fails on words seen in few training sentences, while through phones a word
need only be heard. This command measures that from what `mtspeech evaluate` already wrote
(no model, no decoding): the `hypotheses.jsonl` of each decoder, the evaluated manifest (the
references) and the training manifest (the word counts).

Definitions, so the table is reproducible:
- A word's **training count** is the number of distinct training sentences (normalized
  transcripts, so a sentence read by several speakers counts once) that contain it.
- A reference word is **correct** when the word alignment of the normalized reference and
  hypothesis (jiwer, the alignment behind `metrics.wer`) marks it `equal`. Substituted and
  deleted words are wrong; insertions belong to no reference word and are not counted.
- Accuracy of a bucket = correct reference words / reference words in the bucket, over every
  utterance of the evaluated manifest that has a transcript.
- **In-vocabulary** (IV) words are those at least one training sentence contains, and
  **out-of-vocabulary** (OOV) words those none does (bucket 0): `test-engine` reads sentences
  with words training never had, so the table also gives IV and OOV accuracy apart (the
  word LM, estimated on the training transcripts, holds no OOV word either).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jiwer

from mtspeech.data.manifest import ManifestError, read_manifests
from mtspeech.evaluation.compare import hypotheses_path
from mtspeech.metrics import normalize_for_scoring

log = logging.getLogger(__name__)

# (label, smallest count, largest count or None): the README's rows, plus 0 for words no
# training sentence contains (shown only when some exist, as in `test-engine`).
BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("0", 0, 0), ("1", 1, 1), ("2–3", 2, 3), ("4–10", 4, 10), ("more", 11, None),
)


class AnalysisError(ValueError):
    """Bad or missing input; the message names the file and what to do."""


@dataclass(frozen=True)
class Column:
    """One decoder's hypotheses: `row[task][field]` of each line of a hypotheses.jsonl."""

    label: str
    path: Path
    task: str
    field: str


def bucket_of(count: int) -> str:
    """The label of the bucket that holds a word found in `count` training sentences."""
    for label, low, high in BUCKETS:
        if count >= low and (high is None or count <= high):
            return label
    raise ValueError(f"negative training count {count}")


def sentence_counts(texts: list[str]) -> Counter:
    """Word -> number of distinct normalized sentences among `texts` that contain it."""
    counts: Counter = Counter()
    for sentence in {normalize_for_scoring(t) for t in texts}:
        counts.update(set(sentence.split()))
    return counts


def correct_reference_words(ref: str, hyp: str) -> list[tuple[str, bool]]:
    """Each normalized reference word, in order, with whether the alignment keeps it `equal`."""
    ref_words, hyp_words = normalize_for_scoring(ref).split(), normalize_for_scoring(hyp).split()
    if not ref_words:
        return []
    correct = [False] * len(ref_words)
    if hyp_words:  # jiwer needs a non-empty text on both sides; an empty hypothesis gets nothing right
        for chunk in jiwer.process_words(" ".join(ref_words), " ".join(hyp_words)).alignments[0]:
            if chunk.type == "equal":
                correct[chunk.ref_start_idx:chunk.ref_end_idx] = [True] * (chunk.ref_end_idx - chunk.ref_start_idx)
    return list(zip(ref_words, correct))


def vocabulary_accuracy(counts: Counter, pairs) -> dict:
    """IV and OOV word accuracy of (reference, hypothesis) `pairs`: `{"in": {"words", "correct",
    "accuracy"}, "out": {...}}`, a word being in-vocabulary when `counts` (`sentence_counts` of
    the training texts) has it; accuracy is None for an empty side."""
    tally = {side: {"words": 0, "correct": 0} for side in ("in", "out")}
    for ref, hyp in pairs:
        for word, ok in correct_reference_words(ref, hyp):
            side = tally["in" if counts[word] > 0 else "out"]
            side["words"] += 1
            side["correct"] += ok
    return {side: {**t, "accuracy": t["correct"] / t["words"] if t["words"] else None} for side, t in tally.items()}


def hypotheses_file(path: str | Path) -> Path:
    """`path` itself, or `path/hypotheses.jsonl` when `path` is an evaluation folder."""
    path = hypotheses_path(Path(path))
    if not path.is_file():
        raise AnalysisError(f"{path}: no such hypotheses file or evaluation folder; "
                            "run `mtspeech evaluate ... --out FOLDER` first and pass FOLDER")
    return path


def read_hypotheses(column: Column) -> dict[str, str]:
    """Utterance id -> hypothesis text of one column; raises AnalysisError naming file and line."""
    hyps: dict[str, str] = {}
    with open(column.path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{column.path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnalysisError(f"{where}: invalid JSON ({e.msg})") from None
            value = (row.get(column.task) or {}).get(column.field) if isinstance(row, dict) else None
            if not isinstance(value, str) or "id" not in row:
                raise AnalysisError(
                    f"{where}: no text at {column.task}.{column.field} for the column {column.label!r}; "
                    "was this file written by `mtspeech evaluate` with the decoder that column needs?")
            hyps[row["id"]] = value
    return hyps


def _read_texts(path: str | Path | list, role: str) -> dict[str, str]:
    """Utterance id -> transcript of a manifest, or of several read in order (utterances without
    one are left out)."""
    try:
        utts = read_manifests(path)
    except FileNotFoundError as e:
        raise AnalysisError(f"{e.filename or path}: no such {role} manifest") from None
    except ManifestError as e:
        raise AnalysisError(str(e)) from None
    texts = {u.id: u.text for u in utts if u.text is not None}
    if not texts:
        raise AnalysisError(f"{path}: the {role} manifest has no utterance with a transcript")
    return texts


def word_accuracy_by_frequency(train_manifest: str | Path | list, manifest: str | Path,
                               columns: list[Column]) -> dict:
    """The table as a dict: per bucket, reference words and per column correct words and accuracy.
    `train_manifest` is one manifest or a list (all that the model trained on, like `data.train`).

    Every utterance of `manifest` with a transcript must have a hypothesis in every column, so
    all columns count the same words.
    """
    if not columns:
        raise AnalysisError("no hypotheses given; pass --greedy and/or --lm")
    train = _read_texts(train_manifest, "training")
    counts = sentence_counts(list(train.values()))
    refs = _read_texts(manifest, "evaluated")
    rows = {label: {"words": 0, "correct": Counter()} for label, _, _ in BUCKETS}
    for column in columns:
        hyps = read_hypotheses(column)
        missing = sorted(set(refs) - set(hyps))
        if missing:
            raise AnalysisError(f"{column.path}: no hypothesis for {len(missing)} utterance(s) of {manifest} "
                                f"(first: {missing[0]}); were both made from the same manifest?")
        for utt_id, ref in refs.items():
            for word, ok in correct_reference_words(ref, hyps[utt_id]):
                row = rows[bucket_of(counts[word])]
                if column is columns[0]:  # every column aligns the same reference words
                    row["words"] += 1
                row["correct"][column.label] += ok
    labels = [c.label for c in columns]
    # IV and OOV are the buckets summed: bucket 0 is OOV, every other one IV.
    vocabulary = {}
    for side, wanted in (("in", lambda label: label != "0"), ("out", lambda label: label == "0")):
        words = sum(rows[label]["words"] for label, _, _ in BUCKETS if wanted(label))
        correct = {c: sum(rows[label]["correct"][c] for label, _, _ in BUCKETS if wanted(label)) for c in labels}
        vocabulary[side] = {"words": words, "correct": correct,
                            "accuracy": {c: correct[c] / words if words else None for c in labels}}
    buckets = []
    for label, low, high in BUCKETS:
        row = rows[label]
        if label == "0" and row["words"] == 0:
            continue
        buckets.append({
            "bucket": label, "min_sentences": low, "max_sentences": high, "words": row["words"],
            "correct": {c: row["correct"][c] for c in labels},
            "accuracy": {c: row["correct"][c] / row["words"] if row["words"] else None for c in labels},
        })
    return {
        "definition": "reference words bucketed by the number of distinct training sentences that contain "
                      "them; a word is correct when the jiwer alignment of normalized texts marks it equal",
        "train_manifest": (str(train_manifest) if isinstance(train_manifest, (str, Path))
                           else [str(p) for p in train_manifest]),
        "train_sentences": len({normalize_for_scoring(t) for t in train.values()}),
        "manifest": str(manifest), "utterances": len(refs),
        "columns": [{"label": c.label, "hypotheses": str(c.path), "field": f"{c.task}.{c.field}"} for c in columns],
        "buckets": buckets,
        "vocabulary": vocabulary,
    }


def render_table(result: dict) -> str:
    """The result as the README's markdown table."""
    labels = [c["label"] for c in result["columns"]]
    lines = ["| word in … training sentences | words | " + " | ".join(labels) + " |",
             "|---|---:|" + "---:|" * len(labels)]
    for b in result["buckets"]:
        cells = ["—" if b["accuracy"][c] is None else f"{100 * b['accuracy'][c]:.0f} %" for c in labels]
        lines.append(f"| {b['bucket']} | {b['words']} | " + " | ".join(cells) + " |")
    if "vocabulary" in result:  # files written before IV/OOV was reported lack it
        lines += ["", "| word … training | words | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
        for side, name in (("in", "in (IV)"), ("out", "not in (OOV)")):
            v = result["vocabulary"][side]
            cells = ["—" if v["accuracy"][c] is None else f"{100 * v['accuracy'][c]:.0f} % ({v['correct'][c]})"
                     for c in labels]
            lines.append(f"| {name} | {v['words']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mtspeech analyze`."""
    parser.add_argument("--train", required=True, nargs="+", metavar="MANIFEST",
                        help="training manifest(s), all that the model trained on (counts the "
                             "distinct sentences holding each word)")
    parser.add_argument("--manifest", required=True,
                        help="the manifest that was evaluated (its transcripts are the references)")
    parser.add_argument("--greedy", default=None, metavar="FOLDER",
                        help="`mtspeech evaluate` output with the greedy decoder (column: ASR greedy)")
    parser.add_argument("--lm", default=None, metavar="FOLDER",
                        help="`mtspeech evaluate --decoder beam --lm ...` output "
                             "(columns: ASR + trigram, phones → words)")
    parser.add_argument("--out", default=None,
                        help="JSON to write (default: word_accuracy_by_frequency.json in the first folder given)")


def main(args: argparse.Namespace) -> int:
    """Run `mtspeech analyze`; returns the exit status."""
    try:
        columns = []
        if args.greedy is not None:
            columns.append(Column("ASR greedy", hypotheses_file(args.greedy), "asr", "hyp"))
        if args.lm is not None:
            path = hypotheses_file(args.lm)
            columns += [Column("ASR + trigram", path, "asr", "hyp"),
                        Column("phones → words", path, "phones", "words")]
        train = args.train[0] if len(args.train) == 1 else args.train
        result = word_accuracy_by_frequency(train, args.manifest, columns)
    except AnalysisError as e:
        log.error("%s", e)
        return 2
    out = Path(args.out) if args.out else columns[0].path.parent / "word_accuracy_by_frequency.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(render_table(result))
    print(f"results written to {out}")
    return 0
