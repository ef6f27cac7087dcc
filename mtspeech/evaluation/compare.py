"""`mtspeech compare`: is model B better or worse than model A on the same utterances?

Reads what `mtspeech evaluate` wrote for each model (no model, no decoding) and runs a paired
bootstrap over utterances of the error rate B minus A (`stats.paired_bootstrap`). One line
per metric, with its 95 % interval and whether the interval excludes zero. `run.sh` uses it
to measure what the demo's augmentation costs on clean `test` against the plain model trained
in the same run (`COMPARE_PLAIN=1`).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mtspeech.evaluation.stats import format_p, paired_bootstrap

log = logging.getLogger(__name__)

# metric → (per-utterance error field, reference-length field) in hypotheses.jsonl, the first
# pair a task's record has: the ASR head's words are `errors`; the phone head's `errors` are
# phones, and the words it decodes (with a lexicon and LM) are `word_errors`.
ERROR_FIELDS = {
    "wer": (("word_errors", "ref_words"), ("errors", "ref_words")),
    "cer": (("char_errors", "ref_chars"),),
    "per": (("errors", "ref_len"),),
}


class CompareError(ValueError):
    """Missing or mismatched evaluation outputs; the message names the file."""


def hypotheses_path(path: Path) -> Path:
    """`path` itself, or `path/hypotheses.jsonl` when `path` is an evaluation folder."""
    return path / "hypotheses.jsonl" if path.is_dir() else path


def utterance_errors(path: Path, task: str, metric: str) -> dict[str, tuple[int, int]]:
    """utterance id → (errors, reference length) of `task`'s `metric` (wer | cer | per)."""
    out = {}
    for line in hypotheses_path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else {}
        rec = row.get(task, {})
        for errors, length in ERROR_FIELDS[metric]:
            if errors in rec and length in rec:
                out[row["id"]] = (int(rec[errors]), int(rec[length]))
                break
    return out


def compare(a: Path, b: Path, task: str = "asr", metric: str = "cer", n_resamples: int = 1000) -> dict:
    """Paired bootstrap of `task`'s `metric`, B minus A, over the utterances both scored."""
    for side in (a, b):
        if not hypotheses_path(side).is_file():
            raise CompareError(f"{hypotheses_path(side)}: not found; run `mtspeech evaluate ... --out {side}` first")
    ea, eb = utterance_errors(a, task, metric), utterance_errors(b, task, metric)
    ids = sorted(ea.keys() & eb.keys())
    if not ids:
        raise CompareError(f"{a} and {b}: no utterance scored for {task}/{metric} in both")
    if len(ids) < max(len(ea), len(eb)):
        log.warning("%s vs %s: %d of %d utterances scored in both; comparing those",
                    a, b, len(ids), max(len(ea), len(eb)))
    if [ea[u][1] for u in ids] != [eb[u][1] for u in ids]:
        raise CompareError(f"{a} and {b}: reference lengths differ; not the same manifest")
    res = paired_bootstrap([ea[u] for u in ids], [eb[u] for u in ids], n_resamples=n_resamples, seed=0)
    return {"task": task, "metric": metric, "a": res.wer_a, "b": res.wer_b, "delta": res.delta,
            "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value,
            "n_resamples": res.n_resamples, "utterances": len(ids)}


def describe(r: dict, label_a: str = "A", label_b: str = "B") -> str:
    """One line: both rates, the difference in points with its interval, and the reading."""
    if r["ci_low"] > 0:
        reading = f"{label_b} worse (CI excludes 0)"
    elif r["ci_high"] < 0:
        reading = f"{label_b} better (CI excludes 0)"
    else:
        reading = "CI includes 0: no clear difference"
    pts = lambda x: f"{100 * x:+.1f}"  # noqa: E731 - percentage points
    return (f"{r['task']}/{r['metric']}: {label_a} {100 * r['a']:.1f} %, {label_b} {100 * r['b']:.1f} %, "
            f"Δ {pts(r['delta'])} points [{pts(r['ci_low'])}, {pts(r['ci_high'])}] "
            f"(p {format_p(r['p_value'], r['n_resamples'])}, {r['utterances']} utterances): {reading}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", type=Path, help="evaluation folder (or hypotheses.jsonl) of model A, the reference")
    p.add_argument("b", type=Path, help="evaluation folder (or hypotheses.jsonl) of model B, on the same manifest")
    p.add_argument("--task", default="asr", help="the task whose errors to compare (asr, or phones for words "
                   "decoded from the phone head)")
    p.add_argument("--metric", nargs="+", default=["cer", "wer"], choices=sorted(ERROR_FIELDS))
    p.add_argument("--labels", nargs=2, default=["A", "B"], metavar=("A", "B"), help="names for the lines")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--resamples", type=int, default=1000)


def main(args: argparse.Namespace) -> int:
    try:
        results = [compare(args.a, args.b, args.task, m, args.resamples) for m in args.metric]
    except CompareError as e:
        raise SystemExit(f"mtspeech compare: {e}")
    for r in results:
        print(describe(r, *args.labels))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"a": str(args.a), "b": str(args.b), "labels": args.labels,
                                         "results": results}, indent=2) + "\n")
    return 0
