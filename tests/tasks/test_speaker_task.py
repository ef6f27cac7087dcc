"""Speaker task: label space, masking of unknown speakers, GRL, pooling, overfitting."""

from __future__ import annotations

import json
import pickle

import torch

from mtspeech.tasks import TASKS
from mtspeech.tasks.speaker import SpeakerConfig, SpeakerTask


def speaker_task(make_utt, **cfg):
    utts = [make_utt("a", speaker="103"), make_utt("b", speaker="19"), make_utt("c", speaker="103")]
    config = SpeakerConfig(embed_dim=8, attention_dim=8, **cfg)
    labels = json.loads(json.dumps(SpeakerTask.fit_labels(config, utts, "/nonexistent")))
    torch.manual_seed(0)
    return SpeakerTask(config, 16, labels), utts


def test_labels_round_trip_and_unknown_speakers_masked(make_utt):
    task, utts = speaker_task(make_utt)
    assert TASKS["speaker"] is SpeakerTask
    assert task.speakers == ["103", "19"]
    t = pickle.loads(pickle.dumps(task.collate))(utts + [make_utt("d", speaker="unseen"), make_utt("e")])
    assert t.values.tolist()[:3] == [0, 1, 0]
    assert t.present.tolist() == [True, True, True, False, False]


def test_overfit_two_speakers(make_utt, overfit_fn):
    task, utts = speaker_task(make_utt)
    h, h_lens = torch.randn(2, 10, 16), torch.tensor([10, 7])
    first, last = overfit_fn(task, h, h_lens, task.collate(utts[:2]), steps=40)
    assert last < 0.3 * first
    task.eval()
    m = task.metrics(task(h, h_lens), h_lens, task.collate(utts[:2]))
    assert m["accuracy"][1] == 2.0


def test_padding_invariance_and_absent_rows(make_utt):
    task, utts = speaker_task(make_utt)
    task.eval()
    h, h_lens = torch.randn(3, 10, 16), torch.tensor([10, 6, 8])
    alone = task.embed(h[1:2, :6], h_lens[1:2])
    padded = task.embed(h, h_lens)[1:2]
    torch.testing.assert_close(alone, padded)
    targets = task.collate([utts[0], utts[1], make_utt("x", speaker="unseen")])
    full = task.loss(task(h, h_lens), h_lens, targets)
    two = task.loss(task(h[:2], h_lens[:2]), h_lens[:2], task.collate(utts[:2]))
    torch.testing.assert_close(full, two)


def test_no_present_row_gives_zero_loss_with_graph(make_utt):
    task, _ = speaker_task(make_utt)
    h = torch.randn(2, 10, 16)
    t = task.collate([make_utt("x"), make_utt("y", speaker="unseen")])
    loss = task.loss(task(h, torch.tensor([10, 9])), torch.tensor([10, 9]), t)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert task.classifier.grad is not None and not task.classifier.grad.any()
    assert task.metrics(task(h, torch.tensor([10, 9])), torch.tensor([10, 9]), t) == {"accuracy": (0.0, 0.0)}


def test_gradient_reversal_flips_encoder_gradient(make_utt):
    h0, h_lens = torch.randn(2, 10, 16), torch.tensor([10, 8])
    grads = {}
    for adversarial in (False, True):
        task, utts = speaker_task(make_utt, adversarial=adversarial, grl_lambda=0.5)  # same init (seeded)
        h = h0.clone().requires_grad_(True)
        task.loss(task(h, h_lens), h_lens, task.collate(utts[:2])).backward()
        grads[adversarial] = (h.grad, task.embedding.weight.grad)
    torch.testing.assert_close(grads[True][0], -0.5 * grads[False][0])
    torch.testing.assert_close(grads[True][1], grads[False][1])  # the head itself still learns speakers
