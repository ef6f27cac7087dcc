"""The scorers of a CTC task: word and character error rates of a transcript head, phone error
rate (and, with a word decoder over the phones, WER and CER) of a phone head.

One implementation of each metric, used by training's dev pass (greedy best path) and by
`mtspeech evaluate` (the decoder `load_recognizer` builds, with word times): corpus rates
sum(S+D+I)/sum(N) of `mtspeech.metrics`, after its scoring normalisation, against the
manifest's transcript and phones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mtspeech import metrics as M
from mtspeech.tasks.base import ScoredBatch, Scores


@dataclass
class BestPath:
    """A greedy hypothesis without score or word times (training's dev pass needs neither)."""

    text: str
    score: float | None = None
    words: list | None = None


class TranscriptScorer:
    """WER and CER of a transcript head, decoded by `decode` (default: the greedy best path)."""

    def __init__(self, task, decode=None):
        self.task, self.name = task, task.name
        self.decode = decode or self._best_path
        self.collected: dict[str, list] = {"refs": [], "hyps": []}

    def _best_path(self, log_probs, lens) -> list[BestPath]:
        return [BestPath(self.task.decode_text(ids)) for ids in self.task.greedy_decode(log_probs, lens)]

    def add(self, batch: ScoredBatch) -> list[dict]:
        log_probs = batch.logits.detach().float().log_softmax(-1).cpu()
        hyps = self.decode(log_probs, batch.enc.lens.cpu())
        records = []
        for u, hyp in zip(batch.utts, hyps):
            text = " ".join(hyp.text.split())  # a trailing lone "▁" piece decodes to a space
            rec = {"hyp": text, "score": hyp.score, "words": [asdict(w) for w in hyp.words or []]}
            if u.text is not None:
                counts = M.utterance_word_errors([u.text], [text])[0]
                chars = M.cer([u.text], [text])
                rec.update(ref=u.text, errors=counts.errors, ref_words=counts.ref_len, wer=counts.rate,
                           char_errors=chars.errors, ref_chars=chars.ref_len)
                self.collected["refs"].append(u.text)
                self.collected["hyps"].append(text)
            records.append(rec)
        return records

    def finish(self) -> Scores:
        refs, hyps = self.collected["refs"], self.collected["hyps"]
        if not refs:
            return Scores(not_scored={f"{self.name}/wer": "no utterance has a transcript"})
        w, c = M.wer(refs, hyps), M.cer(refs, hyps)
        return Scores({f"{self.name}/wer": w.rate, f"{self.name}/cer": c.rate},
                      {f"{self.name}/wer": asdict(w), f"{self.name}/cer": asdict(c)})


class PhoneScorer:
    """PER of the greedy phones; with `decode` (a word decoder over the phone posteriors: a
    phone lexicon and a word LM), also WER and CER of the words it finds."""

    def __init__(self, task, decode=None):
        self.task, self.name, self.decode = task, task.name, decode
        self.collected: dict[str, list] = {"refs": [], "hyps": [], "text_refs": [], "text_hyps": []}

    def add(self, batch: ScoredBatch) -> list[dict]:
        words = None
        if self.decode is not None:
            words = self.decode(batch.logits.detach().float().log_softmax(-1).cpu(), batch.enc.lens.cpu())
        records = []
        for k, (u, ids) in enumerate(zip(batch.utts, self.task.greedy_decode(batch.logits, batch.enc.lens))):
            hyp = self.task.decode_text(ids).split()
            rec = {"hyp": hyp}
            if u.phones is not None:
                counts = M.per([u.phones], [hyp])
                rec.update(ref=list(u.phones), errors=counts.errors, ref_len=counts.ref_len)
                self.collected["refs"].append(list(u.phones))
                self.collected["hyps"].append(hyp)
            if words is not None:
                rec["words"] = words[k].text
                if u.text is not None:
                    counts = M.utterance_word_errors([u.text], [words[k].text])[0]
                    chars = M.cer([u.text], [words[k].text])
                    rec.update(word_errors=counts.errors, ref_words=counts.ref_len,
                               char_errors=chars.errors, ref_chars=chars.ref_len)
                    self.collected["text_refs"].append(u.text)
                    self.collected["text_hyps"].append(words[k].text)
            records.append(rec)
        return records

    def finish(self) -> Scores:
        out, c = Scores(), self.collected
        if c["refs"]:
            p = M.per(c["refs"], c["hyps"])
            out.metrics[f"{self.name}/per"], out.counts[f"{self.name}/per"] = p.rate, asdict(p)
        else:
            out.not_scored[f"{self.name}/per"] = "no utterance has phones"
        if c["text_refs"]:
            w, ch = M.wer(c["text_refs"], c["text_hyps"]), M.cer(c["text_refs"], c["text_hyps"])
            out.metrics.update({f"{self.name}/wer": w.rate, f"{self.name}/cer": ch.rate})
            out.counts.update({f"{self.name}/wer": asdict(w), f"{self.name}/cer": asdict(ch)})
        elif self.decode is not None:
            out.not_scored[f"{self.name}/wer"] = "no utterance has a transcript"
        return out
