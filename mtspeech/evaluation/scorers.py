"""The per-task collectors of `mtspeech evaluate`: one per task kind, batch in, metrics out.

`add(batch_utts, logits, enc, record_rows, frame_shift_s)` fills the per-utterance records;
`finish()` returns (metrics, counts, not_scored). `scorer_for` picks a task's collector; adding
a task kind means adding one collector class and one branch there. Split from `evaluate.py`,
which owns loading, batching and the report.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import torch

from mtspeech import metrics as M
from mtspeech.decoding.ctc import add_word_times
from mtspeech.tasks.layer_mix import task_input

log = logging.getLogger(__name__)

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


def scorer_for(name: str, task, decoder, max_trials: int):
    """The collector of task `name` (None, with a warning, for a kind without one)."""
    kind = task.cfg.kind
    if kind == "ctc":
        return _TextCTC(name, task, decoder) if task.cfg.label == "text" else _PhoneCTC(name, task, decoder)
    if kind == "speaker":
        return _Speaker(name, task, max_trials=max_trials)
    if kind == "vad":
        return _VAD(name, task)
    log.warning("task %r of kind %r has no evaluator; skipped", name, kind)
    return None
