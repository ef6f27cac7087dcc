"""The demo model's results: collected from a run.sh experiment into committed JSON, and
rendered from that JSON into the README's results table and recipes/synthetic/RESULTS.md.

    python scripts/demo_results.py collect exp/synthetic/all   # writes docs/results/demo/results.json
    python scripts/demo_results.py render                      # README block + RESULTS.md from it
    python scripts/demo_results.py check                       # exit 1 if either differs

Error rates carry 95 % intervals over speakers (`stats.speaker_bootstrap`: a voice the model
cannot hear fails on all its utterances, so utterances are not independent). One trained
model: the intervals say nothing about training seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "demo" / "results.json"
README = ROOT / "README.md"
RESULTS_MD = ROOT / "recipes" / "synthetic" / "RESULTS.md"
BEGIN, END = "<!-- demo-results:begin -->", "<!-- demo-results:end -->"
SPLITS = {  # split → what it holds
    "test": "seen voices, seen engines",
    "test-unseen": "4 held-out voices",
    "test-voices": "24 more held-out voices",
    "test-engine": "festival: an engine no training split has",
    "test-phone": "test through a telephone channel: 8 kHz, 300-3400 Hz, μ-law",
}
COMMAND = ("bash recipes/synthetic/run.sh && python scripts/demo_results.py collect exp/synthetic/all "
           "&& python scripts/demo_results.py render")


def _rate(rows: list[dict], head: str, err: str, ref: str) -> dict | None:
    from mtspeech.evaluation.stats import speaker_bootstrap

    pairs = [(r[head][err], r[head][ref]) for r in rows if head in r and err in r[head]]
    if not pairs or not sum(n for _, n in pairs):
        return None
    speakers = [r["id"].split("-")[0] for r in rows if head in r and err in r[head]]
    b = speaker_bootstrap(pairs, speakers, n_resamples=2000)
    return {"rate": round(sum(e for e, _ in pairs) / sum(n for _, n in pairs), 4),
            "ci95": [round(b.ci_low, 4), round(b.ci_high, 4)], "utterances": len(pairs), "speakers": len(set(speakers))}


def _hypotheses(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "hypotheses.jsonl").read_text().splitlines() if line.strip()]


def collect(exp: Path) -> dict:
    """Every split's headline numbers from `exp`'s eval-SPLIT (greedy) and eval-SPLIT-lm folders."""
    ckpt = exp / "final.pt"
    out = {"command": COMMAND, "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
           # the commit of the checkout that trained and evaluated it
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=exp, capture_output=True,
                                    text=True).stdout.strip(),
           "splits": {}}
    stopping = exp / "stopping.json"
    if stopping.is_file():
        s = json.loads(stopping.read_text())
        out["training"] = {k: s[k] for k in ("stopped_by", "epochs", "updates")}
    for split, what in SPLITS.items():
        greedy, lm = exp / f"eval-{split}", exp / f"eval-{split}-lm"
        if not (greedy / "results.json").is_file():
            continue
        g, gm = _hypotheses(greedy), json.loads((greedy / "results.json").read_text())["metrics"]
        row = {"what": what, "asr_cer_greedy": _rate(g, "asr", "char_errors", "ref_chars"),
               "asr_wer_greedy": _rate(g, "asr", "errors", "ref_words"),
               "phone_error_rate": _rate(g, "phones", "errors", "ref_len"),
               # point values (evaluate's report): not in the table, which shows intervals only
               "speaker_eer": gm.get("speaker/eer"), "vad_f1": gm.get("vad/f1")}
        if (lm / "results.json").is_file():
            h = _hypotheses(lm)
            row["asr_wer_beam_lm"] = _rate(h, "asr", "errors", "ref_words")
            row["phones_words_wer"] = _rate(h, "phones", "word_errors", "ref_words")
        out["splits"][split] = row
    return out


def _pct(x: dict | None) -> str:
    if not x:
        return "–"
    return f"{100 * x['rate']:.1f} [{100 * x['ci95'][0]:.1f}, {100 * x['ci95'][1]:.1f}]"


def table(result: dict) -> str:
    lines = ["| split | ASR CER, greedy | ASR WER, greedy | ASR WER, beam + LM | phones → words WER | "
             "phone error |", "|---|---|---|---|---|---|"]
    for split, r in result["splits"].items():
        lines.append(f"| `{split}` ({r['what']}) | {_pct(r['asr_cer_greedy'])} | {_pct(r['asr_wer_greedy'])} | "
                     f"{_pct(r.get('asr_wer_beam_lm'))} | {_pct(r.get('phones_words_wer'))} | "
                     f"{_pct(r['phone_error_rate'])} |")
    t = result.get("training")
    note = (f"Percent, 95 % interval over speakers in brackets; one trained model (commit {result['commit']}, "
            f"checkpoint sha256 {result['checkpoint_sha256'][:12]}"
            + (f", stopped by {t['stopped_by']} after {t['epochs']} epochs" if t else "") + "). "
            f"Made by `{result['command']}`.")
    return "\n".join(lines + ["", note])


def rendered_readme(result: dict) -> str:
    text = README.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(result)}\n{END}{tail}"


def rendered_results_md(result: dict) -> str:
    return "\n".join([
        "<!-- Rendered by `python scripts/demo_results.py render` from docs/results/demo/results.json. -->",
        "# Results of the synthetic recipe", "",
        "As icefall keeps them: per recipe, the command, the commit, the numbers.", "",
        "## `demo.yaml` (the model `run.sh` trains)", "", "Command:", "", f"    {result['command']}", "",
        table(result), ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["collect", "render", "check"])
    ap.add_argument("exp", nargs="?", help="collect: the run.sh experiment folder")
    args = ap.parse_args(argv)
    if args.action == "collect":
        if not args.exp:
            ap.error("collect needs the experiment folder")
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(collect(Path(args.exp)), indent=1) + "\n")
        print(f"wrote {OUT}")
        return 0
    result = json.loads(OUT.read_text())
    want = {README: rendered_readme(result), RESULTS_MD: rendered_results_md(result)}
    if args.action == "render":
        for path, text in want.items():
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        return 0
    stale = [p for p, text in want.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    for p in stale:
        print(f"{p} differs from what {OUT} renders", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
