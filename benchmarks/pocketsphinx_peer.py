"""The ASR peer: PocketSphinx, out of the box, on the demo corpus's test splits.

PocketSphinx 5 (`pip install pocketsphinx`, in the `peers` extra) is CMU's GMM-HMM
recognizer of the 2010s; its package ships the en-us acoustic model, a general English
trigram LM and CMUdict, so nothing is downloaded. It runs with every default (`Decoder()`),
one utterance at a time on one process, on the 16 kHz files of the manifests as they are.

    python benchmarks/pocketsphinx_peer.py --data data/synthetic --out pocketsphinx.json

What is measured, per split (default `test-engine`, festival voices no training ever hears,
and `test`, the seen engines):
  - WER (`metrics.wer`: both sides through `metrics.normalize_for_scoring`, the project's
    scoring normalisation), with S/D/I;
  - its 95 % interval over speakers (`stats.speaker_bootstrap`: speakers resampled with
    replacement, each bringing all its utterances; test-engine has only 8 voices, and one
    voice's utterances fail together);
  - in-vocabulary and out-of-vocabulary word accuracy (`analyze.vocabulary_accuracy`): a
    reference word is IV when some training sentence of our model (`--train`, default the
    demo's `train` and `train-voices`) contains it, and correct when the jiwer alignment marks
    it equal. PocketSphinx has its own, far larger vocabulary, so for it OOV means only "a word
    our model never trained on": the split our model's numbers are read against;
  - the real-time factor (decoding wall time / audio seconds) on the machine of the run.
Every hypothesis is kept in the JSON (`hypotheses`), so our model's decoders can later be
compared with PocketSphinx on the same utterances, paired, without running it again.

PocketSphinx does not depend on our model, so its numbers hold for any model trained on the
same corpus; the JSON names the corpus (its `synth.json` config, seed included, the manifests'
SHA-256 and `--corpus-commit`, the commit that synthesized it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import run_main  # noqa: E402

from mtspeech import metrics as M  # noqa: E402
from mtspeech.analyze import sentence_counts, vocabulary_accuracy  # noqa: E402
from mtspeech.data.audio import load_audio  # noqa: E402
from mtspeech.data.geometry import SAMPLE_RATE  # noqa: E402
from mtspeech.data.manifest import read_manifest, read_manifests  # noqa: E402
from mtspeech.evaluation.stats import speaker_bootstrap  # noqa: E402

log = logging.getLogger("pocketsphinx_peer")

BOOTSTRAP_SAMPLES = 2000


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data", default="data/synthetic", help="folder of the split manifests (mtspeech prepare)")
    ap.add_argument("--splits", nargs="+", default=["test-engine", "test"], help="manifests DATA/SPLIT.jsonl to decode")
    ap.add_argument("--train", nargs="+", default=None, metavar="MANIFEST",
                    help="what our model trained on, for IV/OOV (default: DATA/train.jsonl and "
                         "DATA/train-voices.jsonl, the demo's data.train)")
    ap.add_argument("--corpus-commit", default=None,
                    help="the git commit of the synthesizer that wrote the corpus (recorded in the JSON)")
    ap.add_argument("--limit", type=int, default=0, help="first N utterances of each split (0: all)")
    ap.add_argument("--samples", type=int, default=BOOTSTRAP_SAMPLES, help="bootstrap resamples")
    ap.add_argument("--out", default=None, help="JSON to write")


# ----------------------------------------------------------------------------- scoring


def score_split(refs: list[str], hyps: list[str], speakers: list, train_counts, samples: int = BOOTSTRAP_SAMPLES,
                seed: int = 0) -> dict:
    """WER with S/D/I, its interval over speakers and IV/OOV accuracy of one split's
    `refs`/`hyps` (raw texts: normalised here, as `metrics.wer` does)."""
    per_utt = M.utterance_word_errors(refs, hyps)
    total = sum(per_utt, M.ErrorCounts())
    if total.ref_len == 0:
        raise SystemExit("no reference words in the split: WER undefined")
    boot = speaker_bootstrap([(e.errors, e.ref_len) for e in per_utt], speakers, n_resamples=samples, seed=seed)
    return {
        "utterances": len(refs), "speakers": boot.speakers, "words": total.ref_len,
        "wer": round(total.rate, 4), "substitutions": total.substitutions, "deletions": total.deletions,
        "insertions": total.insertions,
        "wer_ci95_speakers": [round(boot.ci_low, 4), round(boot.ci_high, 4)], "bootstrap_samples": samples,
        "vocabulary": vocabulary_accuracy(train_counts, zip(refs, hyps)),
    }


# ----------------------------------------------------------------------------- decoding


def decode_split(decoder, utts) -> tuple[list[str], float, float]:
    """PocketSphinx's hypothesis of each utterance, the decoding seconds and the audio seconds."""
    hyps, decode_s, audio_s = [], 0.0, 0.0
    for u in utts:
        wav = load_audio(u.audio, SAMPLE_RATE).numpy()
        pcm = np.clip(np.round(wav * 32768), -32768, 32767).astype(np.int16)  # PocketSphinx reads 16-bit PCM
        t0 = time.perf_counter()
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        decode_s += time.perf_counter() - t0
        audio_s += len(pcm) / SAMPLE_RATE
        hyps.append(hyp.hypstr if hyp is not None else "")
    return hyps, decode_s, audio_s


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus_provenance(data: Path, splits: list[str], commit: str | None) -> dict:
    """What names the corpus: the synthesizer's config (seed included), the manifests' hashes."""
    root = data / "corpus"
    summary = data / "summary.json"
    if summary.is_file():  # `mtspeech prepare` records where the corpus it read lies
        root = Path(json.loads(summary.read_text(encoding="utf-8")).get("root", root))
    synth = root / "synth.json"
    config = json.loads(synth.read_text(encoding="utf-8"))["config"] if synth.is_file() else None
    if config is None:
        log.warning("%s not found: the JSON will not name the corpus's synthesis config", synth)
    return {"synth_config": config, "commit": commit,
            "manifests_sha256": {s: _sha256(data / f"{s}.jsonl") for s in splits}}


def run(args) -> dict:
    try:
        import pocketsphinx
    except ImportError as e:
        raise SystemExit(f"pocketsphinx is not installed ({e}); run MTSPEECH_PEERS=1 bash scripts/setup.sh") from None
    from importlib.metadata import version

    data = Path(args.data)
    for split in args.splits:
        if not (data / f"{split}.jsonl").is_file():
            raise SystemExit(f"manifest {data / split}.jsonl not found (mtspeech synth, then mtspeech prepare)")
    train = args.train or [p for p in (data / "train.jsonl", data / "train-voices.jsonl") if p.is_file()]
    if not train:
        raise SystemExit(f"no training manifest in {data}; pass --train (IV/OOV needs what the model trained on)")
    counts = sentence_counts([u.text for u in read_manifests(train) if u.text is not None])
    decoder = pocketsphinx.Decoder(loglevel="FATAL")  # every default: en-us model, LM and dictionary
    splits, hypotheses = {}, {}
    t0 = time.perf_counter()
    for split in args.splits:
        utts = [u for u in read_manifest(data / f"{split}.jsonl") if u.text is not None]
        utts = utts[:args.limit] if args.limit else utts
        unlabelled = [u.id for u in utts if u.speaker is None]
        if unlabelled:
            raise SystemExit(f"{data / split}.jsonl: {len(unlabelled)} utterance(s) without a speaker (first: "
                             f"{unlabelled[0]}); the interval resamples speakers")
        hyps, decode_s, audio_s = decode_split(decoder, utts)
        splits[split] = score_split([u.text for u in utts], hyps, [u.speaker for u in utts], counts, args.samples)
        splits[split]["rtf"] = round(decode_s / audio_s, 3)
        hypotheses[split] = {u.id: h for u, h in zip(utts, hyps)}
        log.info("%s: %s", split, {k: v for k, v in splits[split].items() if k != "vocabulary"})
    return {"benchmark": "pocketsphinx_peer", "peer": f"pocketsphinx {version('pocketsphinx')}, en-us defaults",
            "data": str(data), "train": [str(p) for p in train], "corpus": corpus_provenance(data, args.splits,
                                                                                           args.corpus_commit),
            "splits": splits, "hypotheses": hypotheses, "elapsed_s": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------- rendering


def _accuracy(side: dict) -> str:
    return "—" if side["accuracy"] is None else f"{100 * side['accuracy']:.1f} % ({side['correct']} / {side['words']})"


def render(result: dict) -> str:
    config = result["corpus"]["synth_config"] or {}
    lines = [f"PocketSphinx ({result['peer']}) on the demo corpus (synth seed {config.get('seed', '?')}, "
             f"{config.get('hours', '?')} h; synthesizer commit {result['corpus']['commit'] or 'not recorded'})", "",
             "| split | utts / speakers | words | WER | 95 % CI over speakers | S / D / I "
             "| IV word accuracy | OOV word accuracy | RTF |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for split, r in result["splits"].items():
        lo, hi = r["wer_ci95_speakers"]
        lines.append(f"| {split} | {r['utterances']} / {r['speakers']} | {r['words']} | {100 * r['wer']:.1f} % | "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] | {r['substitutions']} / {r['deletions']} / "
                     f"{r['insertions']} | {_accuracy(r['vocabulary']['in'])} | {_accuracy(r['vocabulary']['out'])} "
                     f"| {r['rtf']:.2f} |")
    lines.append(f"\n(IV: a word some sentence of {', '.join(Path(p).name for p in result['train'])} contains; "
                 f"{result['elapsed_s']} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
