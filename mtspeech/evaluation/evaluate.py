"""Evaluate a checkpoint on a manifest: every task the model has and the manifest labels.

    mtspeech evaluate exp/synthetic/all/final.pt data/synthetic/test.jsonl --out exp/synthetic/all/eval/test
    mtspeech evaluate CKPT MANIFEST --decoder beam --beam-size 16 --lm auto

Metrics (keys are `<task name>/<metric>`, as in the trainer's dev results):
  - text CTC task (ASR): `wer`, `cer` — corpus rates sum(S+D+I)/sum(N) after
    `metrics.normalize_for_scoring` on both sides (jiwer alignment), decoded with the chosen
    decoder (greedy or beam, optionally with a word n-gram LM);
  - phone CTC task: `per` — greedy decoding against the manifest's phones; with a word LM
    (`--decoder beam --lm ...`) also `wer`, `cer` of the words a beam search finds in the
    phone posteriors, spelled in phones through CMUdict (`lm.build_phone_lexicon`);
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

import numpy as np
import torch
from tqdm import tqdm

from mtspeech import metrics as M
from mtspeech.checkpoint import CheckpointError, load_model
from mtspeech.data.audio import AudioError, load_audio
from mtspeech.data.manifest import ManifestError, Utterance, read_manifest
from mtspeech.decode import PhoneTable, add_word_times, build_decoder
from mtspeech.tasks.layer_mix import task_input

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP_SAMPLES = 160  # feature frame shift (docs/interfaces.md)
LOWER_IS_BETTER = ("wer", "cer", "per", "eer")


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


# --------------------------------------------------------------------------- scorers
# One small collector per task kind: `add(batch_utts, logits, enc, record_rows)` fills the
# per-utterance records; `finish()` returns (metrics, counts, not_scored). Adding a task
# kind means adding one collector class and one `SCORERS` entry.
class _TextCTC:
    def __init__(self, name: str, task, decoder):
        self.name, self.task, self.decoder = name, task, decoder
        self.refs: list[str] = []
        self.hyps: list[str] = []

    def add(self, utts, logits, enc, rows, frame_shift_s):
        log_probs = logits.float().log_softmax(-1).cpu()
        lens = enc.lens.cpu()
        hyps = self.decoder.decode(log_probs, lens)
        add_word_times(hyps, log_probs, lens, self.task.tokenizer, frame_shift_s)
        for u, hyp, row in zip(utts, hyps, rows):
            hyp.text = " ".join(hyp.text.split())  # a trailing lone "▁" piece decodes to a space
            rec = {"hyp": hyp.text, "score": hyp.score,
                   "words": [asdict(w) for w in hyp.words or []]}
            if u.text is not None:
                counts = M.utterance_word_errors([u.text], [hyp.text])[0]
                chars = M.cer([u.text], [hyp.text])
                rec.update(ref=u.text, errors=counts.errors, ref_words=counts.ref_len, wer=counts.rate,
                           char_errors=chars.errors, ref_chars=chars.ref_len)
                self.refs.append(u.text)
                self.hyps.append(hyp.text)
            row[self.name] = rec

    def finish(self):
        if not self.refs:
            return {}, {}, {f"{self.name}/wer": "no utterance has a transcript"}
        w, c = M.wer(self.refs, self.hyps), M.cer(self.refs, self.hyps)
        return ({f"{self.name}/wer": w.rate, f"{self.name}/cer": c.rate},
                {f"{self.name}/wer": asdict(w), f"{self.name}/cer": asdict(c)}, {})


class _PhoneCTC:
    """PER of greedy phones; with a word decoder (a phone lexicon and word LM), also WER and
    CER of the words it finds in the phone posteriors."""

    def __init__(self, name: str, task, decoder=None):
        self.name, self.task, self.decoder = name, task, decoder
        self.refs: list[list[str]] = []
        self.hyps: list[list[str]] = []
        self.text_refs: list[str] = []
        self.text_hyps: list[str] = []

    def add(self, utts, logits, enc, rows, frame_shift_s):
        words = None
        if self.decoder is not None:
            words = self.decoder.decode(logits.float().log_softmax(-1).cpu(), enc.lens.cpu())
        for k, (u, ids, row) in enumerate(zip(utts, self.task.greedy_decode(logits, enc.lens), rows)):
            hyp = self.task.decode_text(ids).split()
            rec = {"hyp": hyp}
            if u.phones is not None:
                counts = M.per([u.phones], [hyp])
                rec.update(ref=list(u.phones), errors=counts.errors, ref_len=counts.ref_len)
                self.refs.append(list(u.phones))
                self.hyps.append(hyp)
            if words is not None:
                rec["words"] = words[k].text
                if u.text is not None:
                    counts = M.utterance_word_errors([u.text], [words[k].text])[0]
                    chars = M.cer([u.text], [words[k].text])
                    rec.update(word_errors=counts.errors, ref_words=counts.ref_len,
                               char_errors=chars.errors, ref_chars=chars.ref_len)
                    self.text_refs.append(u.text)
                    self.text_hyps.append(words[k].text)
            row[self.name] = rec

    def finish(self):
        metrics, counts, not_scored = {}, {}, {}
        if self.refs:
            p = M.per(self.refs, self.hyps)
            metrics[f"{self.name}/per"], counts[f"{self.name}/per"] = p.rate, asdict(p)
        else:
            not_scored[f"{self.name}/per"] = "no utterance has phones"
        if self.text_refs:
            w, c = M.wer(self.text_refs, self.text_hyps), M.cer(self.text_refs, self.text_hyps)
            metrics.update({f"{self.name}/wer": w.rate, f"{self.name}/cer": c.rate})
            counts.update({f"{self.name}/wer": asdict(w), f"{self.name}/cer": asdict(c)})
        elif self.decoder is not None:
            not_scored[f"{self.name}/wer"] = "no utterance has a transcript"
        return metrics, counts, not_scored


class _Speaker:
    def __init__(self, name: str, task, decoder=None, max_trials: int = 10_000):
        self.name, self.task, self.max_trials = name, task, max_trials
        self.embeddings: list[np.ndarray] = []
        self.speakers: list[str] = []
        self.correct = self.known = 0

    def add(self, utts, logits, enc, rows, frame_shift_s):
        emb = self.task.embed(task_input(self.task, enc), enc.lens).float().cpu().numpy()
        pred = self.task.identify(logits).cpu().tolist()
        for u, e, p, row in zip(utts, emb, pred, rows):
            rec = {"predicted": self.task.speakers[p], "ref": u.speaker}
            if u.speaker is not None:
                self.embeddings.append(e)
                self.speakers.append(u.speaker)
                if u.speaker in self.task.speakers:  # accuracy only means something for known speakers
                    rec["correct"] = self.task.speakers[p] == u.speaker
                    self.known += 1
                    self.correct += int(rec["correct"])
            row[self.name] = rec

    def finish(self):
        out, counts, missing = {}, {}, {}
        if self.known:
            out[f"{self.name}/accuracy"] = self.correct / self.known
            counts[f"{self.name}/accuracy"] = {"correct": self.correct, "total": self.known}
        else:
            missing[f"{self.name}/accuracy"] = "no utterance of a training speaker"
        try:
            scores, labels = M.make_trials(np.stack(self.embeddings) if self.embeddings else np.zeros((0, 1)),
                                           self.speakers, max_trials=self.max_trials)
            eer, threshold = M.equal_error_rate(scores, labels)
            out[f"{self.name}/eer"] = eer
            counts[f"{self.name}/eer"] = {"target_trials": int(labels.sum()),
                                          "nontarget_trials": int(len(labels) - labels.sum()),
                                          "threshold": threshold}
        except ValueError:
            missing[f"{self.name}/eer"] = "needs both same-speaker and different-speaker pairs"
        return out, counts, missing


class _VAD:
    def __init__(self, name: str, task, decoder=None):
        self.name, self.task = name, task
        self.probs: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, utts, logits, enc, rows, frame_shift_s):
        probs = self.task.speech_probs(logits.float()).cpu()
        targets = self.task.collate(utts)  # frame labels exactly as in training
        lens = torch.minimum(enc.lens.cpu(), targets.lens)
        for b, (u, row) in enumerate(zip(utts, rows)):
            n = int(lens[b])
            p = probs[b, :n].numpy()
            rec = {"speech_frames_predicted": int((p > self.task.cfg.threshold).sum()), "frames": n}
            if targets.present[b]:
                y = targets.values[b, :n].numpy()
                self.probs.append(p)
                self.labels.append(y)
                rec["speech_frames_ref"] = int(y.sum())
            row[self.name] = rec

    def finish(self):
        if not self.probs:
            return {}, {}, {f"{self.name}/f1": "no utterance has speech segments"}
        p, y = np.concatenate(self.probs), np.concatenate(self.labels) > 0.5
        pred = p > self.task.cfg.threshold
        precision, recall, f1 = M.frame_prf(pred, y)
        out = {f"{self.name}/precision": precision, f"{self.name}/recall": recall, f"{self.name}/f1": f1}
        counts = {f"{self.name}/f1": {"tp": int((pred & y).sum()), "fp": int((pred & ~y).sum()),
                                      "fn": int((~pred & y).sum()), "frames": int(len(y))}}
        missing = {}
        try:
            out[f"{self.name}/auc"] = M.roc_auc(p, y)
        except ValueError:
            missing[f"{self.name}/auc"] = "needs both speech and non-speech frames"
        return out, counts, missing


def _scorer(name: str, task, decoder, max_trials: int):
    kind = task.cfg.kind
    if kind == "ctc":
        return _TextCTC(name, task, decoder) if task.cfg.label == "text" else _PhoneCTC(name, task, decoder)
    if kind == "speaker":
        return _Speaker(name, task, max_trials=max_trials)
    if kind == "vad":
        return _VAD(name, task)
    log.warning("task %r of kind %r has no evaluator; skipped", name, kind)
    return None


# --------------------------------------------------------------------------- LM
def _phone_word_decoder(task, lm_path: Path, lexicon_path: Path, options: dict):
    """A beam decoder that finds the LM's words in a phone head's posteriors, spelled with
    CMUdict pronunciations: a word needs only be heard, never spelled, which on a closed
    vocabulary with little text beats spelling it from sub-word units."""
    if lm_path.suffix != ".arpa":
        log.warning("task %s: no words decoded from phones: that needs an ARPA LM (its vocabulary "
                    "is the lexicon), got %s", task.cfg.name, lm_path)
        return None
    from mtspeech.lm import ArpaLM, build_phone_lexicon

    lexicon = build_phone_lexicon(ArpaLM.load(lm_path).vocab, task.phones, lexicon_path)
    return build_decoder("beam", PhoneTable(task.phones), **{**options, "lexicon": lexicon})


def training_transcripts_lm(exp, out_dir: Path, order: int = 3, checkpoint: Path | None = None,
                            use_embedded: bool = True) -> Path:
    """The `--lm auto` LM (ARPA): the one embedded in the checkpoint (`mtspeech embed-lm`) if
    any, else a word n-gram built from the training transcripts named in its config.

    `exp.data.train` is resolved against the working directory first, then the checkpoint's folder.
    """
    from mtspeech.embed_lm import embedded_lm
    from mtspeech.lm import build_ngram_lm

    if use_embedded and checkpoint is not None:
        embedded = embedded_lm(checkpoint, out_dir)
        if embedded is not None:
            log.info("--lm auto: using the word LM embedded in %s", checkpoint)
            return embedded

    manifests = [exp.data.train] if isinstance(exp.data.train, str) else list(exp.data.train)
    texts = []
    for name in manifests:
        candidates = [Path(name)]
        if checkpoint is not None and not Path(name).is_absolute():
            candidates.append(checkpoint.parent / name)
        train = next((p for p in candidates if p.is_file()), None)
        if train is None:
            raise EvaluationError(f"--lm auto: the training manifest {name} named in the checkpoint's config "
                                  "was not found; run from the training working directory or pass --lm ARPA")
        texts += [u.text for u in read_manifest(train) if u.text]
    if not texts:
        raise EvaluationError(f"--lm auto: {', '.join(manifests)} hold no transcripts")
    return build_ngram_lm(texts, order=order, out_path=out_dir / "lm.arpa")


# --------------------------------------------------------------------------- main entry
def evaluate(
    checkpoint: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    decoder: str = "greedy",
    beam_size: int = 10,
    lm: str | Path | None = None,
    lm_weight: float = 0.5,
    word_score: float = 0.0,
    lm_order: int = 3,
    chunk_frames: int | None = None,
    left_chunks: int | None = None,
    max_batch_seconds: float = 120.0,
    device: str = "auto",
    worst_n: int = 10,
    max_trials: int = 10_000,
    threads: int | None = None,
) -> dict:
    """Evaluate `checkpoint` on `manifest`, write hypotheses.jsonl, results.json, report.md to `out_dir`.

    decoder: "greedy" or "beam" (flashlight prefix beam search, `beam_size`); `lm`: an ARPA
    word LM path for the beam decoder, or "auto" to build a `lm_order`-gram LM from the
    training transcripts (`exp.data.train` of the checkpoint's config). `chunk_frames` /
    `left_chunks`: evaluate the streaming (chunked-attention) model; None = full context.
    Returns the results dict (also written as results.json).
    """
    t0 = time.time()
    checkpoint, manifest, out_dir = Path(checkpoint), Path(manifest), Path(out_dir)
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model, exp, _ = load_model(checkpoint, device)
    except CheckpointError as e:
        raise EvaluationError(str(e)) from None
    if not manifest.is_file():
        raise EvaluationError(f"manifest {manifest} does not exist")
    try:
        utts = read_manifest(manifest)
    except (ManifestError, UnicodeDecodeError) as e:
        raise EvaluationError(f"manifest {manifest} is malformed: {e}") from None
    if not utts:
        raise EvaluationError(f"manifest {manifest} holds no utterance")
    out_dir.mkdir(parents=True, exist_ok=True)

    if decoder != "beam" and lm is not None:
        raise EvaluationError("an LM needs --decoder beam")
    lm_path = None
    if lm == "auto":
        lm_path = training_transcripts_lm(exp, out_dir, lm_order, checkpoint)
    elif lm is not None:
        lm_path = Path(lm)
        if not lm_path.is_file():
            raise EvaluationError(f"LM file {lm_path} does not exist")
    options = {"beam_size": beam_size, "lm": lm_path, "lm_weight": lm_weight, "word_score": word_score} \
        if decoder == "beam" else {}

    scorers = {}
    for name, task in model.tasks.items():
        dec = None
        if task.cfg.kind == "ctc" and task.cfg.label == "text":
            dec = build_decoder(decoder, task.tokenizer, **options)
        elif task.cfg.kind == "ctc" and lm_path is not None:
            dec = _phone_word_decoder(task, lm_path, out_dir / f"{name}.lexicon.txt", options)
        s = _scorer(name, task, dec, max_trials)
        if s is not None:
            scorers[name] = s
    frame_shift_s = model.encoder.subsampling * HOP_SAMPLES / SAMPLE_RATE

    rows: dict[int, dict] = {}
    skipped: list[dict] = []
    audio_s = 0.0
    batches = duration_batches(utts, max_batch_seconds)
    with torch.no_grad():
        for batch in tqdm(batches, desc=f"evaluate {manifest.name}", unit="batch", dynamic_ncols=True, leave=False):
            idx, wavs = [], []
            for i in batch:
                try:
                    wavs.append(load_audio(utts[i].audio))
                    idx.append(i)
                except AudioError as e:
                    log.warning("skipping utterance %s: %s", utts[i].id, e)
                    skipped.append({"id": utts[i].id, "audio": utts[i].audio, "reason": e.reason})
            if not idx:
                continue
            wav, wav_lens = _pad(wavs)
            audio_s += float(wav_lens.sum()) / SAMPLE_RATE
            enc = model.encode(wav.to(device), wav_lens.to(device), chunk_frames, left_chunks)
            logits = model.task_logits(enc)
            batch_utts = [utts[i] for i in idx]
            batch_rows = [{"id": u.id, "duration": u.duration} for u in batch_utts]
            for name, s in scorers.items():
                s.add(batch_utts, logits[name], enc, batch_rows, frame_shift_s)
            rows.update(zip(idx, batch_rows))

    if not rows:
        raise EvaluationError(f"no audio of {manifest} could be read ({len(skipped)} files skipped)")
    results_metrics, counts, not_scored = {}, {}, {}
    for s in scorers.values():
        m, c, miss = s.finish()
        results_metrics.update(m)
        counts.update(c)
        not_scored.update(miss)

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
        "decoder": decoder,
        "decoder_options": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
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
    parser.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    parser.add_argument("--beam-size", type=int, default=10)
    parser.add_argument("--lm", default=None, metavar="ARPA|auto",
                        help="word n-gram LM for beam search; 'auto' builds one from the training transcripts")
    parser.add_argument("--lm-weight", type=float, default=0.5)
    parser.add_argument("--word-score", type=float, default=0.0)
    parser.add_argument("--lm-order", type=int, default=3, help="n-gram order for --lm auto")
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
        results = evaluate(args.checkpoint, args.manifest, out, decoder=args.decoder, beam_size=args.beam_size,
                           lm=args.lm, lm_weight=args.lm_weight, word_score=args.word_score, lm_order=args.lm_order,
                           chunk_frames=args.chunk_frames, left_chunks=args.left_chunks,
                           max_batch_seconds=args.max_batch_seconds, device=args.device, worst_n=args.worst)
    except EvaluationError as e:
        log.error("%s", e)
        return 2
    print(render_report(results))
    print(f"results written to {out}")
    return 0
