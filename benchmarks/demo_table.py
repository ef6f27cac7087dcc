"""The README's table of the demo's results, from the evaluation folders `run.sh` writes.

Each row is one split and decoder: `EXP/eval-SPLIT` (greedy) or `EXP/eval-SPLIT-lm` (beam 20 +
word trigram, on the ASR head's pieces and on the phone head through CMUdict). With
`--plain`, the last column is the same decoder's CER for the demo trained without
augmentation (`COMPARE_PLAIN=1`). `--out` keeps the numbers as JSON, next to the docs.

    python benchmarks/demo_table.py --exp exp/synthetic/all --plain exp/synthetic/plain
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import run_main  # noqa: E402

GREEDY, BEAM_ASR, BEAM_PHONES = ("ASR head, greedy", "ASR head, beam 20 + word trigram",
                                 "phone head → words (beam 20, CMUdict lexicon + word trigram)")
# (split, what it is): the clean splits get all three decoders, the twins greedy only.
CLEAN = (("test", "seen voices, new sentences"), ("test-unseen", "4 new voices"),
         ("test-voices", "24 new voices"))
TWINS = (("test-snr10", "10 dB noise"), ("test-snr0", "0 dB noise"), ("test-unseen-snr10", ""),
         ("test-unseen-snr0", ""), ("test-voices-snr10", ""), ("test-room", "rooms"))


def _metrics(exp: Path, folder: str) -> dict:
    path = exp / folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; `bash recipes/synthetic/run.sh` (with COMPARE_PLAIN=1 "
                         "for the plain model) writes it")
    return json.loads(path.read_text())["metrics"]


def _row(split: str, about: str, decoder: str, exp: Path, plain: Path | None) -> dict:
    folder = f"eval-{split}" if decoder == GREEDY else f"eval-{split}-lm"
    cer_key = "phones/cer" if decoder == BEAM_PHONES else "asr/cer"
    wer_key = "phones/wer" if decoder == BEAM_PHONES else "asr/wer"
    m = _metrics(exp, folder)
    row = {"split": split, "about": about, "decoder": decoder, "cer": m[cer_key], "wer": m[wer_key]}
    if decoder == GREEDY:  # the heads do not depend on the decoder: once per split
        row.update({k: m.get(k) for k in ("phones/per", "speaker/accuracy", "speaker/eer", "vad/f1", "vad/auc")})
    if plain is not None:
        row["plain_cer"] = _metrics(plain, folder)[cer_key]
    return row


def run(args: argparse.Namespace) -> dict:
    exp, plain = Path(args.exp), Path(args.plain) if args.plain else None
    rows = [_row(s, about, d, exp, plain) for s, about in CLEAN for d in (GREEDY, BEAM_ASR, BEAM_PHONES)]
    rows += [_row(s, about, GREEDY, exp, plain) for s, about in TWINS]
    return {"exp": str(exp), "plain": str(plain) if plain else None, "rows": rows}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def render(result: dict) -> str:
    plain = result["plain"] is not None
    head = ["split", "decoding", "CER", "WER", "phone error", "speaker accuracy", "speaker EER",
            "speech/non-speech F1 (AUC)"] + (["CER without augmentation"] if plain else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        name = "" if r["decoder"] != GREEDY else f"`{r['split']}`" + (f" ({r['about']})" if r["about"] else "")
        cells = [name, r["decoder"], _pct(r["cer"]), _pct(r["wer"])]
        if r["decoder"] == GREEDY:
            f1 = "—" if r["vad/f1"] is None else f"{r['vad/f1']:.3f} ({r['vad/auc']:.4f})"
            cells += [_pct(r["phones/per"]), _pct(r["speaker/accuracy"]), _pct(r["speaker/eer"]), f1]
        else:
            cells += [""] * 4
        if plain:
            cells.append(_pct(r["plain_cer"]))
        lines.append(("| " + " | ".join(cells) + " |").replace("|  |", "| |").replace("|  |", "| |"))
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--exp", required=True, help="the demo's experiment folder (run.sh's EXP)")
    ap.add_argument("--plain", help="the demo without augmentation (run.sh's PLAIN, COMPARE_PLAIN=1)")
    ap.add_argument("--out", help="write the numbers as JSON here")


if __name__ == "__main__":
    run_main(__doc__, add_arguments, run, render)
