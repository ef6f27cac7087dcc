"""Issue 14's goals for the demo recipe (and issue 35's telephone goal), per training seed and
over the seeds.

One `COMPARE_PLAIN=1 run.sh` run (one seed) measures the augmented demo against the same
recipe without augmentation on 106 `test` utterances. Its paired bootstrap covers which
utterances were drawn, not which seed was: seed to seed the clean cost moves by more than its
0.5-point budget, so one seed cannot settle the goal either way. This reads the results of
several seeds and states each goal per seed and on the mean over seeds:

- clean cost: ASR head, greedy, `test` CER of demo minus plain (`compare-plain/test.json`);
- 10 dB: the demo's `test-snr10` CER over its `test` CER (`compare-plain/test-snr10.json`);
- VAD: head frame F1 minus Silero VAD's on every split `benchmarks/peers.py` scored;
- speaker: head EER minus Resemblyzer's on `test-unseen` and `test-unseen-snr10` (and
  `test-voices`, reported, not a goal);
- telephone (issue 35): the demo's `test-phone` CER over its `test` CER
  (`compare-plain/test-phone.json`, which run.sh writes since the telephone twins exist; a
  seed without it leaves the row out).

The mean over seeds comes with a Student t interval over the seeds (the training noise).
The clean cost also gets the seed-aware interval of `mtspeech compare` over the seed pairs
(two-level bootstrap over seeds and utterances) when the evaluation folders the comparisons
name exist under `--root`; otherwise the seeds' t interval widened by their utterance noise.
Its verdict needs 3 seeds.

    python benchmarks/demo_goals.py \\
        --compare exp/synthetic/all/compare-plain exp/synthetic/all-seed1/compare-plain \\
        --peers peers-seed0.json peers-seed1.json   # benchmarks/peers.py --out, one per seed
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import run_main  # noqa: E402

from scipy.stats import norm  # noqa: E402

from mtspeech.evaluation.compare import compare_seeds  # noqa: E402
from mtspeech.evaluation.stats import SeedAwareDelta, mean_std_ci, seed_t_interval, verdict  # noqa: E402

CLEAN_BUDGET = 0.005  # CER, demo minus plain on `test`
NOISE_RATIO = 1.5  # `test-snr10` CER at most this times `test` CER
PHONE_RATIO = 1.5  # `test-phone` CER at most this times `test` CER (issue 35)
EER_SPLITS = ("test-unseen", "test-unseen-snr10")  # the goal's; test-voices is reported too


def _asr_cer(compare_json: Path) -> dict:
    """The ASR head's CER record of one seed's `mtspeech compare --json` file, with the file's
    evaluation folders (`a`: plain, `b`: demo) as `a_eval`, `b_eval` and its utterance-only
    interval as `ci_low`, `ci_high` (files written before seed pairs held it at the top)."""
    if not compare_json.is_file():
        raise SystemExit(f"{compare_json}: not found; `COMPARE_PLAIN=1 bash recipes/synthetic/run.sh` writes it")
    spec = json.loads(compare_json.read_text())
    one = lambda x: x[0] if isinstance(x, list) else x  # noqa: E731 - one seed per file
    for r in spec["results"]:
        if r["task"] == "asr" and r["metric"] == "cer":
            utt = r.get("utterance_only", r)
            return {**r, "ci_low": utt["ci_low"], "ci_high": utt["ci_high"],
                    "a_eval": one(spec["a"]), "b_eval": one(spec["b"])}
    raise SystemExit(f"{compare_json}: no asr/cer result")


def seed_numbers(compare_dir: Path, peers_json: Path | None) -> dict:
    """One seed's goal quantities (fractions; None where its peers result is not given)."""
    clean = _asr_cer(compare_dir / "test.json")
    noisy = _asr_cer(compare_dir / "test-snr10.json")
    out = {
        "compare": str(compare_dir), "label": seed_label(compare_dir),
        "plain_eval": clean["a_eval"], "demo_eval": clean["b_eval"],
        "plain_cer": clean["a"], "demo_cer": clean["b"], "clean_cost": clean["delta"],
        "clean_cost_ci": [clean["ci_low"], clean["ci_high"]],
        "snr10_cer": noisy["b"], "noise_ratio": noisy["b"] / clean["b"],
        "vad_margin_min": None, "vad_splits_won": None, "vad_splits": None,
        "phone_cer": None, "phone_ratio": None,
    }
    if (compare_dir / "test-phone.json").is_file():
        phone = _asr_cer(compare_dir / "test-phone.json")
        out.update(phone_cer=phone["b"], phone_ratio=phone["b"] / clean["b"])
    if peers_json is None:
        return out
    peers = json.loads(peers_json.read_text())
    margins = {s: v["head"]["f1"] - v["silero"]["f1"] for s, v in peers["vad"].items()}
    out.update(peers=str(peers_json), vad_margin=margins, vad_margin_min=min(margins.values()),
               vad_splits_won=sum(m >= 0 for m in margins.values()), vad_splits=len(margins))
    for split, v in peers["speaker"].items():
        out[f"eer_head/{split}"] = v["head"]["eer"]
        out[f"eer_resemblyzer/{split}"] = v["resemblyzer"]["eer"]
        out[f"eer_margin/{split}"] = v["head"]["eer"] - v["resemblyzer"]["eer"]
    return out


def seed_label(compare_dir: Path) -> str:
    """`all-seed1` for run.sh's `exp/synthetic/all-seed1/compare-plain`; else the folder's name."""
    return compare_dir.parent.name if compare_dir.name == "compare-plain" else compare_dir.name


def pooled_clean_cost(seeds: list[dict], root: Path, resamples: int = 2000) -> dict:
    """The clean cost over the seeds, demo minus plain, with its seed-aware interval.

    With the evaluation folders under `root`: the two-level bootstrap over seeds and `test`
    utterances (`compare_seeds`). Without them: the per-seed costs' t interval with the seeds'
    mean utterance-bootstrap standard error added in quadrature (`seed_t_interval`).
    """
    per_seed = [s["clean_cost"] for s in seeds]
    folders = [(root / s["plain_eval"], root / s["demo_eval"]) for s in seeds]
    if all((a / "hypotheses.jsonl").is_file() and (b / "hypotheses.jsonl").is_file() for a, b in folders):
        r = compare_seeds(folders, "asr", "cer", n_resamples=resamples)
        sa = r["seed_aware"] or {}
        out = {"delta": r["delta"], "ci": [sa.get("ci_low"), sa.get("ci_high")], "p_value": sa.get("p_value"),
               "level": "seeds+utterances (two-level bootstrap)", "utterances": r["utterances"],
               "utterance_only_ci": [r["utterance_only"]["ci_low"], r["utterance_only"]["ci_high"]]}
    else:
        z = float(norm.ppf(0.975))
        utt_se = sum((s["clean_cost_ci"][1] - s["clean_cost_ci"][0]) / (2 * z) for s in seeds) / len(seeds)
        res = seed_t_interval(per_seed, utterance_se=utt_se)
        out = {"delta": res.delta, "ci": [res.ci_low, res.ci_high], "p_value": res.p_value,
               "level": "seeds + the seeds' mean utterance standard error (evaluation folders not under --root)"}
    res = SeedAwareDelta(out["delta"], tuple(per_seed), tuple(range(len(seeds))), None, *out["ci"],
                         out["p_value"], "seeds")
    return {**out, "seeds": len(seeds), "per_seed": per_seed, "verdict": verdict(res, out["p_value"]),
            "within_budget": None if out["ci"][1] is None else bool(out["ci"][1] <= CLEAN_BUDGET)}


def over_seeds(seeds: list[dict]) -> dict:
    """Mean, sample std and 95 % t interval over the seeds of every numeric goal quantity."""
    keys = [k for k, v in seeds[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {}
    for k in keys:
        values = [s.get(k) for s in seeds]
        if any(v is None for v in values):
            continue
        m = mean_std_ci(values)
        out[k] = {"mean": m.mean, "std": m.std, "ci": [m.ci_low, m.ci_high], "n": m.n}
    return out


def goals(seeds: list[dict], mean: dict) -> list[dict]:
    """Each goal: its value per seed and on the mean, met or not (None: not measured)."""
    def row(name, key, met):
        per_seed = [s.get(key) for s in seeds]
        on_mean = mean.get(key, {}).get("mean")
        return {"goal": name, "key": key, "per_seed": per_seed,
                "met_per_seed": [None if v is None else bool(met(v)) for v in per_seed],
                "mean": on_mean, "mean_ci": mean.get(key, {}).get("ci"),
                "met_on_mean": None if on_mean is None else bool(met(on_mean))}

    rows = [row("clean cost ≤ 0.5 CER points", "clean_cost", lambda v: v <= CLEAN_BUDGET),
            row("10 dB CER ≤ 1.5 × clean", "noise_ratio", lambda v: v <= NOISE_RATIO),
            row("telephone CER ≤ 1.5 × clean (issue 35)", "phone_ratio", lambda v: v <= PHONE_RATIO),
            row("VAD F1 ≥ Silero's, every split (worst margin)", "vad_margin_min", lambda v: v >= 0)]
    rows += [row(f"EER ≤ Resemblyzer's, {s}", f"eer_margin/{s}", lambda v: v <= 0) for s in EER_SPLITS]
    rows.append(row("EER ≤ Resemblyzer's, test-voices (reported, not a goal)", "eer_margin/test-voices",
                    lambda v: v <= 0))
    return rows


def run(args: argparse.Namespace) -> dict:
    compare_dirs = [Path(d) for d in args.compare]
    peers = [Path(p) for p in args.peers] if args.peers else [None] * len(compare_dirs)
    if len(peers) != len(compare_dirs):
        raise SystemExit(f"--peers: {len(peers)} files for {len(compare_dirs)} --compare folders")
    seeds = [seed_numbers(d, p) for d, p in zip(compare_dirs, peers)]
    mean = over_seeds(seeds)
    # the seeds' mean 10 dB CER over their mean clean CER (each seed scores the same utterances)
    pooled_ratio = sum(s["snr10_cer"] for s in seeds) / sum(s["demo_cer"] for s in seeds)
    pooled_phone = (sum(s["phone_cer"] for s in seeds) / sum(s["demo_cer"] for s in seeds)
                    if all(s["phone_cer"] is not None for s in seeds) else None)
    return {"benchmark": "demo_goals", "seeds": seeds, "mean": mean, "goals": goals(seeds, mean),
            "pooled_clean_cost": pooled_clean_cost(seeds, Path(args.root)),
            "pooled_noise_ratio": pooled_ratio, "pooled_phone_ratio": pooled_phone}


def _cell(key: str, v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.2f}" if key in ("noise_ratio", "phone_ratio") else f"{100 * v:+.1f}"


def render(r: dict) -> str:
    n = len(r["seeds"])
    head = "| goal | " + " | ".join(s["label"] for s in r["seeds"]) + " | mean [95 % CI over seeds] | met |"
    lines = ["Issue 14's goals and issue 35's (points for CER, F1 and EER margins; ratios for 10 dB and "
             "telephone):", "",
             head, "|---" * (n + 3) + "|"]
    for g in r["goals"]:
        if all(ok is None for ok in g["met_per_seed"]):
            continue  # not measured (no peers result)
        cells = [_cell(g["key"], v) + ("" if ok is None else (" ✓" if ok else " ✗"))
                 for v, ok in zip(g["per_seed"], g["met_per_seed"])]
        ci = g["mean_ci"]
        mean = _cell(g["key"], g["mean"])
        if ci and not any(math.isnan(c) for c in ci):
            mean += f" [{_cell(g['key'], ci[0])}, {_cell(g['key'], ci[1])}]"
        met = {None: "–", True: "on the mean", False: "no"}[g["met_on_mean"]]
        if all(g["met_per_seed"]):
            met = "every seed" if n > 1 else "yes"
        lines.append(f"| {g['goal']} | " + " | ".join(cells) + f" | {mean} | {met} |")
    lines += ["", f"10 dB over clean, the seeds' mean CERs: {r['pooled_noise_ratio']:.3f}"]
    if r["pooled_phone_ratio"] is not None:
        lines += [f"Telephone over clean, the seeds' mean CERs: {r['pooled_phone_ratio']:.3f}"]
    p = r["pooled_clean_cost"]
    if p["ci"][0] is not None:
        budget = {True: "inside", False: "not inside", None: "–"}[p["within_budget"]]
        lines += [f"Clean cost over {p['seeds']} seed(s), seed-aware ({p['level']}): {100 * p['delta']:+.2f} "
                  f"points [{100 * p['ci'][0]:+.2f}, {100 * p['ci'][1]:+.2f}], {p['verdict']}; the whole interval "
                  f"{budget} the {100 * CLEAN_BUDGET:.1f}-point budget"]
    else:
        lines += [f"Clean cost, one seed: {100 * p['delta']:+.2f} points; {p['verdict']}"]
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--compare", nargs="+", required=True,
                    help="one `compare-plain` folder per seed (run.sh's EXP/compare-plain, or its copy)")
    ap.add_argument("--peers", nargs="+", help="`benchmarks/peers.py` JSON per seed, in the same order")
    ap.add_argument("--root", default=".", help="where the evaluation folders the comparisons name lie "
                    "(the clone run.sh ran in), for the pooled clean cost")
    ap.add_argument("--out", help="write the result as JSON here")


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
