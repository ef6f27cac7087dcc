"""`mtspeech compare`: is model B better or worse than model A on the same utterances?

Reads what `mtspeech evaluate` wrote for each model (no model, no decoding). Give the folders
in pairs, one pair per training seed: with several seeds the interval is seed-aware (two-level
bootstrap over seeds and utterances, `stats.seed_utterance_bootstrap`) and the verdict is read
at the Holm-adjusted level over the printed metrics; with fewer than 3 seeds there is no
verdict, only the utterance-only interval, which holds the trained models fixed. `run.sh`
uses one pair to show what the demo's augmentation costs on clean `test` against the plain
model trained in the same run (`COMPARE_PLAIN=1`); `benchmarks/demo_goals.py` reads several.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from mtspeech.evaluation.stats import (SeedAwareDelta, adjust_p_values, format_p, paired_bootstrap,
                                       seed_utterance_bootstrap, verdict)

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


def _aligned(pairs: list[tuple[Path, Path]], task: str, metric: str) -> tuple[list[str], list[dict], list[dict]]:
    """The utterances every folder scored, and per pair A's and B's errors on them."""
    for a, b in pairs:
        for side in (a, b):
            if not hypotheses_path(side).is_file():
                raise CompareError(f"{hypotheses_path(side)}: not found; run `mtspeech evaluate ... --out {side}` first")
    ea = [utterance_errors(a, task, metric) for a, _ in pairs]
    eb = [utterance_errors(b, task, metric) for _, b in pairs]
    ids = sorted(set.intersection(*(set(e) for e in ea + eb)))
    if not ids:
        raise CompareError(f"{pairs[0][0]} and {pairs[0][1]}: no utterance scored for {task}/{metric} in every folder")
    most = max(len(e) for e in ea + eb)
    if len(ids) < most:
        log.warning("%d of %d utterances scored in every folder; comparing those", len(ids), most)
    lengths = [ea[0][u][1] for u in ids]
    for (a, b), x, y in zip(pairs, ea, eb):
        if [x[u][1] for u in ids] != lengths or [y[u][1] for u in ids] != lengths:
            raise CompareError(f"{a} and {b}: reference lengths differ; not the same manifest")
    return ids, ea, eb


def compare(a: Path, b: Path, task: str = "asr", metric: str = "cer", n_resamples: int = 1000) -> dict:
    """One pair of models (one training seed): `compare_seeds([(a, b)])`."""
    return compare_seeds([(a, b)], task, metric, n_resamples)


def compare_seeds(pairs: list[tuple[Path, Path]], task: str = "asr", metric: str = "cer",
                  n_resamples: int = 1000, seeds: list[int] | None = None) -> dict:
    """B minus A for `task`'s `metric` over paired training seeds (pair k: seed k of each recipe).

    `seed_aware`: the two-level bootstrap over seeds and utterances (None with one pair: one
    seed says nothing about the training noise). `utterance_only`: the paired bootstrap of the
    errors summed over the pairs, utterances resampled, trained models held fixed.
    """
    ids, ea, eb = _aligned(pairs, task, metric)
    seeds = list(range(len(pairs))) if seeds is None else list(seeds)
    arr_a = [np.array([e[u] for u in ids]) for e in ea]
    arr_b = [np.array([e[u] for u in ids]) for e in eb]
    sa = seed_utterance_bootstrap(arr_a, arr_b, seeds, n_resamples=max(n_resamples, 2000))
    utt = paired_bootstrap(sum(arr_a), sum(arr_b), n_resamples=n_resamples, seed=0)
    return {"task": task, "metric": metric, "a": utt.wer_a, "b": utt.wer_b, "delta": utt.delta,
            "seeds": len(pairs), "per_seed": sa.as_dict()["per_seed"],
            "seed_aware": None if sa.ci_low is None else
            {k: v for k, v in sa.as_dict().items() if k not in ("delta", "per_seed")},
            "utterance_only": {"ci_low": utt.ci_low, "ci_high": utt.ci_high, "p_value": utt.p_value,
                               "n_resamples": utt.n_resamples},
            "utterances": len(ids)}


def judge(results: list[dict], alpha: float = 0.05) -> None:
    """Holm-adjust the seed-aware p-values of the printed metrics (one family) and give each
    result its verdict (in place)."""
    with_p = [r for r in results if r["seed_aware"]]
    adjusted, _ = adjust_p_values([r["seed_aware"]["p_value"] for r in with_p], "holm")
    for r in results:
        r["p_adjusted"] = adjusted[with_p.index(r)] if r in with_p else None
        sa = r["seed_aware"] or {}
        res = SeedAwareDelta(r["delta"], tuple(r["per_seed"].values()), tuple(map(int, r["per_seed"])),
                             sa.get("se"), sa.get("ci_low"), sa.get("ci_high"), sa.get("p_value"), "seeds+utterances")
        r["verdict"] = verdict(res, r["p_adjusted"], alpha)


def describe(r: dict, label_a: str = "A", label_b: str = "B") -> str:
    """Both rates, the difference in points, the seed-aware interval and verdict, then the
    utterance-only interval labelled as such."""
    pts = lambda x: f"{100 * x:+.1f}"  # noqa: E731 - percentage points
    line = (f"{r['task']}/{r['metric']}: {label_a} {100 * r['a']:.1f} %, {label_b} {100 * r['b']:.1f} %, "
            f"Δ {pts(r['delta'])} points")
    if r["seeds"] > 1:
        sa = r["seed_aware"]
        line += (f" (per seed {' / '.join(pts(d) for d in r['per_seed'].values())}; over seeds "
                 f"[{pts(sa['ci_low'])}, {pts(sa['ci_high'])}], p {sa['p_value']:.3f}, Holm {r['p_adjusted']:.3f})")
    u = r["utterance_only"]
    line += (f"; utterances only, seeds fixed: [{pts(u['ci_low'])}, {pts(u['ci_high'])}] "
             f"(p {format_p(u['p_value'], u['n_resamples'])}, {r['utterances']} utterances)")
    return f"{line}: {r.get('verdict', '')}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folders", type=Path, nargs="+", metavar="A B",
                   help="evaluation folders (or hypotheses.jsonl) in pairs, seed by seed: A then B of seed 0, "
                        "A then B of seed 1, ...; A is the reference, every folder on the same manifest")
    p.add_argument("--task", default="asr", help="the task whose errors to compare (asr, or phones for words "
                   "decoded from the phone head)")
    p.add_argument("--metric", nargs="+", default=["cer", "wer"], choices=sorted(ERROR_FIELDS))
    p.add_argument("--labels", nargs=2, default=["A", "B"], metavar=("A", "B"), help="names for the lines")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--resamples", type=int, default=1000)


def main(args: argparse.Namespace) -> int:
    if len(args.folders) % 2:
        raise SystemExit(f"mtspeech compare: {len(args.folders)} folders; give them in A B pairs, one pair a seed")
    pairs = list(zip(args.folders[::2], args.folders[1::2]))
    try:
        results = [compare_seeds(pairs, args.task, m, args.resamples) for m in args.metric]
    except CompareError as e:
        raise SystemExit(f"mtspeech compare: {e}")
    judge(results)
    for r in results:
        print(describe(r, *args.labels))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"a": [str(a) for a, _ in pairs], "b": [str(b) for _, b in pairs],
                                         "labels": args.labels, "results": results}, indent=2) + "\n")
    return 0
