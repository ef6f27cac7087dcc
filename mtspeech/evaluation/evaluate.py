"""Evaluate a checkpoint on a manifest: every task the model has and the manifest labels.

    mtspeech evaluate exp/synthetic/all/final.pt data/synthetic/test.jsonl --out exp/synthetic/all/eval/test
    mtspeech evaluate CKPT MANIFEST --decoder beam --beam-size 16 --lm auto

Metrics come from each task's own scorer (`task.scorer`, the one the trainer's dev pass uses),
so this module names no task kind; it only hands the scorers of a transcript role and of the
phones role the decoders `load_recognizer` built. Keys are `<task name>/<metric>`, as in the
trainer's dev results. The built-in tasks report:
  - text CTC task (ASR): `wer`, `cer` — corpus rates sum(S+D+I)/sum(N) after
    `metrics.normalize_for_scoring` on both sides (jiwer alignment), decoded greedy, or with
    the beam decoder (optionally with a word n-gram LM) when the decoder is not greedy;
  - phone CTC task: `per` — greedy decoding against the manifest's phones; with a word LM
    (`--lm ...`, or one embedded in the checkpoint with `--decoder auto`) also `wer`, `cer` of
    the words the phones decoder finds in the phone posteriors, spelled in phones through
    CMUdict (`decoding.loader.phone_lexicon_for_lm`);
  - speaker task: `accuracy` over utterances whose speaker the model was trained on, and
    `eer` from cosine trials (`metrics.make_trials`) on the pooled embeddings of every
    utterance with a speaker label — the measure that also works for unseen speakers;
  - VAD task: frame `precision`, `recall`, `f1` at the task's threshold and ROC `auc`,
    against frame labels from the manifest's speech segments (the task's own `collate`).
A metric whose labels are absent (or, for EER/AUC, which lacks one of the two classes) is
left out and listed under `not_scored` with the reason.

Outputs in `out_dir`: `hypotheses.jsonl` (one line per scored utterance, manifest order,
with word times from CTC forced alignment), `results.json` (metrics, error counts, worst
utterances, skipped audio) and `report.md`.

Decoders come from `decoding.loader.load_recognizer` with the command's `DecodingConfig`,
exactly as `mtspeech serve` and `transcribe --model` build them from the same flags; whole
utterances are decoded in batches with the same search and settings (`batch_decoder`).

Inference is batched over utterances sorted by duration (little padding), in eval mode
without gradients. Unreadable audio files are skipped, counted and named in the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from mtspeech.checkpoint import CheckpointError
from mtspeech.data.audio import AudioError, load_audio
from mtspeech.data.manifest import ManifestError, Utterance, read_manifest
from mtspeech.decoding import config as decoding_flags
from mtspeech.decoding.config import DecodingConfig, DecodingError
from mtspeech.decoding.ctc import PhoneTable, add_word_times
from mtspeech.decoding.loader import batch_decoder, load_recognizer
from mtspeech.tasks import Role
from mtspeech.tasks.scoring import add_batch, finish, task_scorers

log = logging.getLogger(__name__)

LOWER_IS_BETTER = ("wer", "cer", "per", "eer")
_REPORTED_OPTIONS = ("beam_size", "lm", "lm_weight", "word_score")  # results.json's decoder_options


class EvaluationError(ValueError):
    """Bad evaluation input (checkpoint, manifest, LM); the message names the file."""


# --------------------------------------------------------------------------- batching
def duration_batches(utts: list[Utterance], max_batch_seconds: float) -> list[list[int]]:
    """Indices of `utts` sorted by duration, cut into batches whose padded length
    (longest item × batch size) stays within `max_batch_seconds` (at least one item each)."""
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max([utts[j].duration for j in current] + [utts[i].duration])
        if current and longest * (len(current) + 1) > max_batch_seconds:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _pad(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """list of (S_i,) → wav (B, max S) zero-padded, wav_lens (B,)."""
    lens = torch.tensor([len(w) for w in wavs], dtype=torch.long)
    out = torch.zeros(len(wavs), int(lens.max()))
    for i, w in enumerate(wavs):
        out[i, : len(w)] = w
    return out, lens


# --------------------------------------------------------------------------- main entry
def evaluate(
    checkpoint: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    decoding: DecodingConfig | None = None,
    chunk_frames: int | None = None,
    left_chunks: int | None = None,
    max_batch_seconds: float = 120.0,
    device: str = "auto",
    worst_n: int = 10,
    max_trials: int = 10_000,
    threads: int | None = None,
) -> dict:
    """Evaluate `checkpoint` on `manifest`, write hypotheses.jsonl, results.json, report.md to `out_dir`.

    `decoding`: the decoders, as `mtspeech serve` builds them from the same settings (default
    `DecodingConfig()`); an `lm` of "auto" is written to `out_dir`. The ASR head is decoded
    greedy when the decoder resolves to greedy, else with the beam decoder over its pieces;
    the phone head's words with the phones decoder when there is one. `chunk_frames` /
    `left_chunks`: evaluate the streaming (chunked-attention) model; None = full context.
    Returns the results dict (also written as results.json).
    """
    t0 = time.time()
    checkpoint, manifest, out_dir = Path(checkpoint), Path(manifest), Path(out_dir)
    decoding = decoding or DecodingConfig()
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not checkpoint.is_file():
        raise EvaluationError(f"checkpoint {checkpoint} does not exist")
    if not manifest.is_file():
        raise EvaluationError(f"manifest {manifest} does not exist")
    try:
        utts = read_manifest(manifest)
    except (ManifestError, UnicodeDecodeError) as e:
        raise EvaluationError(f"manifest {manifest} is malformed: {e}") from None
    if not utts:
        raise EvaluationError(f"manifest {manifest} holds no utterance")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        rec = load_recognizer(checkpoint, decoding, "torch-eager", device=device, work_dir=out_dir)
    except CheckpointError as e:
        raise EvaluationError(str(e)) from None
    model = rec.model
    asr_decoder = rec.decoders["greedy" if rec.default_decoder == "greedy" else "beam"]
    scorers = task_scorers(model.tasks, _task_decoders(rec, asr_decoder), max_trials)
    geometry = model.geometry

    rows: dict[int, dict] = {}
    skipped: list[dict] = []
    audio_s = 0.0
    batches = duration_batches(utts, max_batch_seconds)
    with torch.no_grad():
        for batch in tqdm(batches, desc=f"evaluate {manifest.name}", unit="batch", dynamic_ncols=True, leave=False):
            idx, wavs = [], []
            for i in batch:
                try:
                    wavs.append(load_audio(utts[i].audio, geometry.sample_rate))
                    idx.append(i)
                except AudioError as e:
                    log.warning("skipping utterance %s: %s", utts[i].id, e)
                    skipped.append({"id": utts[i].id, "audio": utts[i].audio, "reason": e.reason})
            if not idx:
                continue
            wav, wav_lens = _pad(wavs)
            audio_s += float(wav_lens.sum()) / geometry.sample_rate
            enc = model.encode(wav.to(device), wav_lens.to(device), chunk_frames, left_chunks)
            logits = model.task_logits(enc)
            batch_utts = [utts[i] for i in idx]
            records = add_batch(scorers, batch_utts, logits, enc)
            rows.update((i, {"id": u.id, "duration": u.duration, **r}) for i, u, r in zip(idx, batch_utts, records))

    if not rows:
        raise EvaluationError(f"no audio of {manifest} could be read ({len(skipped)} files skipped)")
    scores = finish(scorers)
    results_metrics, counts, not_scored = scores.metrics, scores.counts, scores.not_scored

    ordered = [rows[i] for i in sorted(rows)]  # manifest order: paired comparisons line up
    with open(out_dir / "hypotheses.jsonl", "w", encoding="utf-8") as f:
        for row in ordered:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    asr = model.asr_task
    scored = [r for r in ordered if "errors" in r.get(asr, {})]
    worst = sorted(scored, key=lambda r: (-r[asr]["errors"], -r[asr]["wer"], r["id"]))[:worst_n]
    elapsed = time.time() - t0
    results = {
        "checkpoint": str(checkpoint),
        "manifest": str(manifest),
        "asr_task": asr,
        "decoder": asr_decoder.name,  # the ASR head's
        "decoder_options": {k: v for k, v in asr_decoder.options.items() if k in _REPORTED_OPTIONS},
        "decoding": {**asdict(decoding), "default_decoder": rec.default_decoder},
        "chunk_frames": chunk_frames,
        "left_chunks": left_chunks,
        "num_utterances": len(utts),
        "num_scored": len(rows),
        "skipped_audio": len(skipped),
        "skipped": skipped,
        "metrics": results_metrics,
        "counts": counts,
        "not_scored": not_scored,
        "worst": [{"id": r["id"], "errors": r[asr]["errors"], "ref_words": r[asr]["ref_words"],
                   "ref": r[asr]["ref"], "hyp": r[asr]["hyp"]} for r in worst],
        "audio_seconds": audio_s,
        "elapsed_seconds": elapsed,
        "real_time_factor": elapsed / audio_s if audio_s else None,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    (out_dir / "report.md").write_text(render_report(results), encoding="utf-8")
    log.info("%s: %s", manifest.name, " ".join(f"{k}={v:.4g}" for k, v in results_metrics.items()))
    return results


def _task_decoders(rec, asr_decoder) -> dict:
    """Task name → the offline decoder its scorer decodes words with, chosen by role: every
    transcript head the ASR decoder's search and settings over its own pieces (with word
    times), the recognizer's phone head the phones decoder, when there is one."""
    phones_decoder = rec.decoders.get("phones")
    out = {}
    for name, task in rec.model.tasks.items():
        if task.role is Role.TRANSCRIPT:
            out[name] = _timed(batch_decoder(asr_decoder, task.tokenizer), task.tokenizer, rec.frame_shift_s)
        elif task is rec.phones and phones_decoder is not None:
            out[name] = batch_decoder(phones_decoder, PhoneTable(task.phones)).decode
    return out


def _timed(decoder, tokenizer, frame_shift_s: float):
    """`decoder.decode` that also times each hypothesis' words (`add_word_times`)."""
    def decode(log_probs: torch.Tensor, lens: torch.Tensor) -> list:
        return add_word_times(decoder.decode(log_probs, lens), log_probs, lens, tokenizer, frame_shift_s)
    return decode


def render_report(results: dict) -> str:
    """A short Markdown report of one evaluation's results dict."""
    lines = [
        f"# Evaluation of `{results['checkpoint']}`",
        "",
        f"Manifest `{results['manifest']}`: {results['num_scored']} of {results['num_utterances']} utterances "
        f"scored ({results['skipped_audio']} unreadable audio files skipped), "
        f"{results['audio_seconds']:.1f} s of audio; decoder `{results['decoder']}`"
        + (f" {results['decoder_options']}" if results["decoder_options"] else "")
        + (f", chunk {results['chunk_frames']} frames" if results["chunk_frames"] else ", full context") + ".",
        "",
        "| metric | value | better |",
        "|---|---:|---|",
    ]
    for key, value in results["metrics"].items():
        better = "lower" if key.rsplit("/", 1)[-1] in LOWER_IS_BETTER else "higher"
        lines.append(f"| {key} | {value:.4f} | {better} |")
    for key, why in results["not_scored"].items():
        lines.append(f"| {key} | — | not scored: {why} |")
    if results["worst"]:
        lines += ["", f"## Worst {len(results['worst'])} utterances ({results['asr_task']})", "",
                  "| id | errors / words | reference | hypothesis |", "|---|---:|---|---|"]
        for w in results["worst"]:
            lines.append(f"| {w['id']} | {w['errors']} / {w['ref_words']} | {w['ref']} | {w['hyp']} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mtspeech evaluate`."""
    parser.add_argument("checkpoint", help="model checkpoint (final.pt)")
    parser.add_argument("manifest", help="JSON Lines manifest to evaluate on")
    parser.add_argument("--out", default=None,
                        help="output folder (default: <checkpoint folder>/eval/<manifest name>)")
    decoding_flags.add_arguments(parser)  # --decoder, --lm, --beam-size, ...: as serve and transcribe
    parser.add_argument("--chunk-frames", type=int, default=None,
                        help="evaluate in streaming mode with chunks of N encoder frames (default: full context)")
    parser.add_argument("--left-chunks", type=int, default=None)
    parser.add_argument("--max-batch-seconds", type=float, default=120.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--worst", type=int, default=10, help="how many worst utterances to list")


def main(args: argparse.Namespace) -> int:
    """Run `mtspeech evaluate`; returns the exit status."""
    out = args.out or str(Path(args.checkpoint).parent / "eval" / Path(args.manifest).stem)
    try:
        results = evaluate(args.checkpoint, args.manifest, out, decoding_flags.from_args(args),
                           chunk_frames=args.chunk_frames, left_chunks=args.left_chunks,
                           max_batch_seconds=args.max_batch_seconds, device=args.device, worst_n=args.worst)
    except (EvaluationError, DecodingError) as e:
        log.error("%s", e)
        return 2
    print(render_report(results))
    print(f"results written to {out}")
    return 0
