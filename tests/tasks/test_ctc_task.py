"""CTC task: phone and text label spaces, greedy decoding, masked loss, overfitting."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from mtspeech.tasks import TASKS, build_task
from mtspeech.tasks.ctc import CTCConfig, CTCTask

PHONES_A = ["HH", "AH", "L", "OW"]
PHONES_B = ["W", "ER", "L", "D"]


def phone_task(make_utt, **cfg):
    utts = [make_utt("a", phones=PHONES_A), make_utt("b", phones=PHONES_B)]
    config = CTCConfig(name="phones", label="phones", dropout=0.0, **cfg)
    labels = json.loads(json.dumps(CTCTask.fit_labels(config, utts, "/nonexistent")))
    return CTCTask(config, 16, labels), utts


def test_registry_and_phone_labels_round_trip(make_utt):
    task, utts = phone_task(make_utt)
    assert TASKS["ctc"] is CTCTask
    assert task.labels == {"label": "phones", "phones": sorted(set(PHONES_A + PHONES_B))}
    assert task.vocab_size == 8  # 7 phones + blank
    t = task.collate(utts)
    assert t.values.shape == (2, 4) and t.lens.tolist() == [4, 4] and t.present.all()
    assert task.decode_text(t.values[0].tolist()) == "HH AH L OW"
    rebuilt = build_task({"kind": "ctc", "name": "phones", "label": "phones"}, 16, task.labels)
    assert rebuilt.collate(utts).values.tolist() == t.values.tolist()


def test_unknown_or_missing_phones_are_masked(make_utt):
    task, _ = phone_task(make_utt)
    t = task.collate([make_utt("c", phones=["ZH"]), make_utt("d"), make_utt("e", phones=["L"])])
    assert t.present.tolist() == [False, False, True]
    assert t.lens.tolist() == [0, 0, 1]


def test_greedy_decode_hand_built_logits():
    best = torch.tensor([[1, 1, 0, 2, 2, 0, 2, 3], [0, 3, 3, 3, 0, 0, 1, 1]])
    logits = torch.nn.functional.one_hot(best, 4).float()
    assert CTCTask.greedy_decode(logits, torch.tensor([8, 8])) == [[1, 2, 2, 3], [3, 1]]
    assert CTCTask.greedy_decode(logits, torch.tensor([7, 3])) == [[1, 2, 2], [3]]


def test_phone_error_counts(make_utt, score_fn):
    task, utts = phone_task(make_utt)
    t = task.collate(utts[:1])  # HH AH L OW
    ids = t.values[0].tolist()
    path = [ids[0], 0, ids[1], ids[1], ids[3]]  # drops L: one deletion
    logits = torch.nn.functional.one_hot(torch.tensor([path]), task.vocab_size).float()
    scores, records = score_fn(task, utts[:1], logits)
    assert scores.metrics == {"phones/per": 0.25}
    assert scores.counts["phones/per"] == {"substitutions": 0, "deletions": 1, "insertions": 0, "ref_len": 4}
    assert records == [{"hyp": ["HH", "AH", "OW"], "ref": PHONES_A, "errors": 1, "ref_len": 4}]


def test_overfit_two_utterances(make_utt, overfit_fn):
    torch.manual_seed(0)
    task, utts = phone_task(make_utt)
    h, h_lens = torch.randn(2, 12, 16), torch.tensor([12, 10])
    first, last = overfit_fn(task, h, h_lens, task.collate(utts), steps=60)
    assert last < 0.3 * first


def test_absent_rows_do_not_change_the_loss(make_utt):
    torch.manual_seed(0)
    task, utts = phone_task(make_utt)
    task.eval()
    h, h_lens = torch.randn(3, 12, 16), torch.tensor([12, 10, 11])
    with_absent = task.collate(utts + [make_utt("c")])
    assert with_absent.present.tolist() == [True, True, False]
    full = task.loss(task(h, h_lens), h_lens, with_absent)
    two = task.loss(task(h[:2], h_lens[:2]), h_lens[:2], task.collate(utts))
    torch.testing.assert_close(full, two)


def test_no_present_row_gives_zero_loss_with_graph(make_utt):
    task, _ = phone_task(make_utt)
    h = torch.randn(2, 12, 16, requires_grad=True)
    t = task.collate([make_utt("c"), make_utt("d")])
    loss = task.loss(task(h, torch.tensor([12, 12])), torch.tensor([12, 12]), t)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert task.out.weight.grad is not None and not task.out.weight.grad.any()


def test_utterances_too_short_for_their_labels_are_left_out_and_counted(make_utt):
    """4 frames cannot hold "L L" + 3 more labels (a repeat needs a blank between): such a row
    would give an infinite loss; it is dropped from the loss and counted, never an inf."""
    torch.manual_seed(0)
    task, utts = phone_task(make_utt)
    repeats = make_utt("r", phones=["L", "L", "OW", "HH", "AH"])  # 5 labels + 1 repeat: needs 6 frames
    h = torch.randn(3, 12, 16)
    targets = task.collate(utts + [repeats])
    fits = task.loss(task(h, torch.tensor([12, 12, 6])), torch.tensor([12, 12, 6]), targets)
    assert task.too_short == 0 and torch.isfinite(fits)
    short = task.loss(task(h, torch.tensor([12, 12, 5])), torch.tensor([12, 12, 5]), targets)
    assert task.too_short == 1 and torch.isfinite(short)
    two = task.loss(task(h[:2], torch.tensor([12, 12])), torch.tensor([12, 12]), task.collate(utts))
    torch.testing.assert_close(short, two)  # exactly the loss without the short row


def test_collate_is_picklable(make_utt):
    task, utts = phone_task(make_utt)
    collate = pickle.loads(pickle.dumps(task.collate))
    assert collate(utts).values.tolist() == task.collate(utts).values.tolist()


TEXTS = [
    "HELLO WORLD", "THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "SHE SAID HELLO TO THE CAT",
    "IT WAS A COLD DAY IN THE CITY", "WE WALKED HOME AT NIGHT", "THE RAIN FELL ON THE ROOF",
    "HE DIDN'T KNOW THE WAY", "MY FRIEND'S HOUSE IS RED", "BIRDS SING IN THE MORNING",
] * 3


def text_task(make_utt, tmp_path):
    pytest.importorskip("mtspeech.text.tokenizer")
    utts = [make_utt(f"t{i}", text=t) for i, t in enumerate(TEXTS)]
    config = CTCConfig(name="asr", label="text", vocab_size=40, dropout=0.0)
    labels = json.loads(json.dumps(CTCTask.fit_labels(config, utts, tmp_path)))
    return CTCTask(config, 16, labels), utts


def test_text_labels_round_trip_and_metrics(make_utt, tmp_path, score_fn):
    task, utts = text_task(make_utt, tmp_path)
    assert task.vocab_size == task.labels["vocab_size"] <= 40  # a soft limit on tiny corpora
    t = task.collate([utts[0], make_utt("x"), utts[1]])
    assert t.present.tolist() == [True, False, True]
    assert task.decode_text(t.values[0, : t.lens[0]].tolist()) == "HELLO WORLD"
    # rebuilt from the JSON labels alone (tokenizer file gone): same ids
    (tmp_path / "asr_spm.model").unlink()
    rebuilt = pickle.loads(pickle.dumps(CTCTask(task.cfg, 16, task.labels)))
    assert rebuilt.collate(utts[:2]).values.tolist() == task.collate(utts[:2]).values.tolist()
    # perfect hypothesis for row 0: zero errors; row 1 empty hypothesis: all deletions
    ids = t.values[0, : t.lens[0]].tolist()
    path = [x for i in ids for x in (i, 0)]
    logits = torch.zeros(3, len(path), task.vocab_size)
    logits[0] = torch.nn.functional.one_hot(torch.tensor(path), task.vocab_size).float()
    logits[1:, :, 0] = 1.0  # all blank
    scores, _ = score_fn(task, [utts[0], make_utt("x"), utts[1]], logits)
    n_words, n_chars = len(TEXTS[1].split()), len(TEXTS[1])
    wer, cer = scores.counts["asr/wer"], scores.counts["asr/cer"]
    assert (wer["deletions"], wer["ref_len"]) == (n_words, 2 + n_words) and wer["substitutions"] + wer["insertions"] == 0
    assert (cer["deletions"], cer["ref_len"]) == (n_chars, 11 + n_chars)


def test_text_overfit(make_utt, tmp_path, overfit_fn):
    torch.manual_seed(0)
    task, utts = text_task(make_utt, tmp_path)
    targets = task.collate(utts[:2])
    h, h_lens = torch.randn(2, 30, 16), torch.tensor([30, 28])
    first, last = overfit_fn(task, h, h_lens, targets, steps=60)
    assert last < 0.3 * first


def test_text_metrics_are_the_reported_metric(make_utt, tmp_path, monkeypatch, score_fn):
    """Checkpoint selection scores exactly what `mtspeech evaluate` reports (normalised text,
    against the manifest's transcript), not raw strings: case, punctuation and spacing
    differences are no errors."""
    from mtspeech import metrics

    task, _ = text_task(make_utt, tmp_path)
    monkeypatch.setattr(task, "decode_text", lambda ids: "HELLO WORLD")  # the hypothesis
    scores, _ = score_fn(task, [make_utt("a", text="Hello,  world!")], torch.zeros(1, 4, task.vocab_size))
    assert scores.metrics == {"asr/wer": 0.0, "asr/cer": 0.0}
    assert scores.counts["asr/cer"]["ref_len"] == metrics.cer(["Hello,  world!"], ["x"]).ref_len
