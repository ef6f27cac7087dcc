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


def test_overfit_two_speakers(make_utt, overfit_fn, score_fn):
    task, utts = speaker_task(make_utt)
    h, h_lens = torch.randn(2, 10, 16), torch.tensor([10, 7])
    first, last = overfit_fn(task, h, h_lens, task.collate(utts[:2]), steps=40)
    assert last < 0.3 * first
    task.eval()
    scores, records = score_fn(task, utts[:2], task(h, h_lens), h, h_lens)
    assert scores.counts["speaker/accuracy"]["total"] == 2 and [r["ref"] for r in records] == ["103", "19"]


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


def test_no_present_row_gives_zero_loss_with_graph(make_utt, score_fn):
    task, _ = speaker_task(make_utt)
    h = torch.randn(2, 10, 16)
    t = task.collate([make_utt("x"), make_utt("y", speaker="unseen")])
    loss = task.loss(task(h, torch.tensor([10, 9])), torch.tensor([10, 9]), t)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert task.classifier.grad is not None and not task.classifier.grad.any()
    scores, _ = score_fn(task, [make_utt("x"), make_utt("y", speaker="unseen")], task(h, torch.tensor([10, 9])), h,
                         torch.tensor([10, 9]))
    assert scores.metrics == {} and set(scores.not_scored) == {"speaker/accuracy", "speaker/eer"}


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


def test_margin_warms_up_and_matches_speechbrain_aam_when_full(make_utt):
    from speechbrain.nnet.losses import AdditiveAngularMargin

    task, utts = speaker_task(make_utt, margin=0.2, scale=30.0, margin_warmup_steps=4)
    targets = task.collate(utts)
    h, h_lens = torch.randn(3, 10, 16), torch.tensor([10, 9, 8])
    margins = []
    for _ in range(6):
        margins.append(task.margin)
        task.loss(task(h, h_lens), h_lens, targets)
    assert margins == [0.0, 0.05, 0.1, 0.15000000000000002, 0.2, 0.2]
    cos = task(h, h_lens)
    one_hot = torch.nn.functional.one_hot(targets.values, 2).float()
    reference = torch.nn.functional.cross_entropy(AdditiveAngularMargin(0.2, 30.0)(cos, one_hot), targets.values)
    task.eval()  # no update counted
    torch.testing.assert_close(task.loss(cos, h_lens, targets), reference)


def test_accuracy_holds_after_the_margin_reaches_its_final_value(make_utt, score_fn):
    """8 speakers, noisy fixed features: trained on through the end of the warm-up, the head
    stays accurate instead of collapsing to one class."""
    utts = [make_utt(f"u{i}", speaker=f"s{i % 8}") for i in range(64)]
    config = SpeakerConfig(embed_dim=16, attention_dim=8, margin=0.3, scale=30.0, margin_warmup_steps=60)
    task = SpeakerTask(config, 16, SpeakerTask.fit_labels(config, utts, "/nonexistent"))
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 1, 16, generator=g)
    h = centres[torch.arange(64) % 8] + 0.8 * torch.randn(64, 12, 16, generator=g)
    h_lens, targets = torch.full((64,), 12), task.collate(utts)
    opt = torch.optim.Adam(task.parameters(), lr=1e-2)
    accuracy = []
    for _ in range(150):
        task.train()
        loss = task.loss(task(h, h_lens), h_lens, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        task.eval()
        accuracy.append(score_fn(task, utts, task(h, h_lens), h, h_lens)[0].metrics["speaker/accuracy"])
    assert task.margin == 0.3
    after = accuracy[60:]  # from the step the margin is full
    assert min(after) >= 0.9, f"accuracy fell to {min(after):.2f} after the warm-up"


def test_checkpoints_from_before_the_warm_up_load_with_the_full_margin(make_utt):
    task, _ = speaker_task(make_utt, margin_warmup_steps=100)
    state = {k: v for k, v in task.state_dict().items() if k != "updates"}
    fresh, _ = speaker_task(make_utt, margin_warmup_steps=100)
    fresh.load_state_dict(state)  # strict: no missing-key error
    assert int(fresh.updates) == 100 and fresh.margin == fresh.cfg.margin
