"""VAD task: frame labels from segments, masked BCE, counts, overfitting."""

from __future__ import annotations

import pickle

import pytest
import torch

from mtspeech.tasks import TASKS, build_task
from mtspeech.tasks.vad import VADConfig, VADTask, encoder_frames, frame_centres_s


def vad_task(**cfg):
    torch.manual_seed(0)
    return VADTask(VADConfig(**cfg), 16, VADTask.fit_labels(VADConfig(), [], "/nonexistent"))


def test_frame_counts_follow_the_contract():
    # samples → fbank frames (S-400)//160+1 → encoder frames ((T-1)//2-1)//2
    assert encoder_frames(399) == 0
    assert encoder_frames(400 + 160 * 6) == 1  # 7 fbank frames: the first full window
    assert encoder_frames(16000) == 23  # 98 fbank frames
    torch.testing.assert_close(frame_centres_s(2), torch.tensor([0.0425, 0.0825], dtype=torch.float64))


def test_frame_labels_hand_computed(make_utt):
    task = vad_task()
    assert TASKS["vad"] is VADTask
    # frame i centre = 0.0425 + 0.04 i s: [0.3, 0.6) holds i = 7..13; [0.85, 2) holds i = 21..22
    utts = [make_utt("a", duration=1.0, speech=[[0.3, 0.6], [0.85, 2.0]]),
            make_utt("b", duration=0.5), make_utt("c", duration=0.3, speech=[])]
    t = pickle.loads(pickle.dumps(task.collate))(utts)
    assert t.lens.tolist() == [23, encoder_frames(8000), encoder_frames(4800)]
    assert t.present.tolist() == [True, False, True]
    expected = [1.0 if 7 <= i <= 13 or i >= 21 else 0.0 for i in range(23)]
    assert t.values[0].tolist() == expected
    assert not t.values[1:].any()


def test_overfit_and_metrics(make_utt, overfit_fn):
    task = build_task({"kind": "vad", "hidden_dim": 8}, 16, {})
    utts = [make_utt("a", duration=1.0, speech=[[0.3, 0.6]]), make_utt("b", duration=0.8, speech=[[0.0, 0.4]])]
    targets = task.collate(utts)
    h, h_lens = torch.randn(2, 23, 16), targets.lens.clone()
    first, last = overfit_fn(task, h, h_lens, targets, steps=60, lr=3e-2)
    assert last < 0.3 * first


def test_counts_on_hand_built_logits(make_utt, score_fn):
    task = vad_task()
    utts = [make_utt("a", duration=1.0, speech=[[0.3, 0.6]]), make_utt("b", duration=1.0)]
    t = task.collate(utts)
    logits = torch.full((2, 23), -5.0)
    logits[0, 5:10] = 5.0  # frames 5,6 false alarms; 7,8,9 hits; 10..13 misses
    logits[1] = 5.0  # absent row: ignored
    scores, records = score_fn(task, utts, logits, h_lens=t.lens)
    assert scores.counts["vad/f1"] == {"tp": 3, "fp": 2, "fn": 4, "frames": 23}
    assert scores.metrics["vad/precision"] == 3 / 5 and scores.metrics["vad/recall"] == 3 / 7
    assert scores.metrics["vad/f1"] == pytest.approx(6 / 12) and 0 <= scores.metrics["vad/auc"] <= 1
    assert records[1] == {"speech_frames_predicted": 23, "frames": 23}  # absent row: not scored
    torch.testing.assert_close(task.speech_probs(logits), torch.sigmoid(logits))


def test_absent_rows_and_empty_batch(make_utt):
    task = vad_task(pos_weight=2.0)
    h, h_lens = torch.randn(3, 23, 16), torch.tensor([23, 20, 23])
    utts = [make_utt("a", speech=[[0.3, 0.6]]), make_utt("b", duration=0.9, speech=[[0.1, 0.2]])]
    full = task.loss(task(h, h_lens), h_lens, task.collate(utts + [make_utt("c")]))
    two = task.loss(task(h[:2], h_lens[:2]), h_lens[:2], task.collate(utts))
    torch.testing.assert_close(full, two)
    none = task.collate([make_utt("c"), make_utt("d")])
    loss = task.loss(task(h[:2], h_lens[:2]), h_lens[:2], none)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert not task.head.weight.grad.any()
