"""DurationBatchSampler: coverage, budget, epochs, DDP sharding, exact resume, DataLoader use."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile
import torch

from mtspeech.data.dataset import UtteranceDataset, collate_batch
from mtspeech.data.manifest import Utterance
from mtspeech.data.sampler import DurationBatchSampler
from mtspeech.tasks import Targets

DURATIONS = np.random.default_rng(0).uniform(0.5, 8.0, 203).round(2).tolist()
BUDGET = 30.0


def flat(batches) -> list[int]:
    return [i for b in batches for i in b]


def padded_seconds(batch) -> float:
    return len(batch) * max(DURATIONS[i] for i in batch)


def test_every_utterance_once_and_budget_respected():
    s = DurationBatchSampler(DURATIONS, BUDGET, seed=1)
    batches = list(s)
    assert sorted(flat(batches)) == list(range(len(DURATIONS)))
    assert len(batches) == len(s)
    assert all(padded_seconds(b) <= BUDGET for b in batches)
    assert max(len(b) for b in batches) > 2 * min(len(b) for b in batches)  # dynamic, not fixed count
    ordered = list(DurationBatchSampler(DURATIONS, BUDGET, shuffle=False))
    assert sorted(flat(ordered)) == list(range(len(DURATIONS))) and ordered == list(
        DurationBatchSampler(DURATIONS, BUDGET, shuffle=False))


def test_epochs_differ_and_are_reproducible():
    s = DurationBatchSampler(DURATIONS, BUDGET, seed=1)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and sorted(flat(e1)) == list(range(len(DURATIONS)))
    again = DurationBatchSampler(DURATIONS, BUDGET, seed=1)
    again.set_epoch(1)
    assert list(again) == e1
    assert list(s) == e1  # iterating a finished epoch again replays it


def test_sortagrad_epochs_go_shortest_first_then_shuffle():
    s = DurationBatchSampler(DURATIONS, BUDGET, seed=1, sorted_epochs=1)
    e0 = list(s)
    longest = [max(DURATIONS[i] for i in b) for b in e0]
    assert longest == sorted(longest) and sorted(flat(e0)) == list(range(len(DURATIONS)))
    assert all(padded_seconds(b) <= BUDGET for b in e0)
    s.set_epoch(1)  # after the sorted epochs: the usual shuffled plan, the same as without SortaGrad
    plain = DurationBatchSampler(DURATIONS, BUDGET, seed=1)
    plain.set_epoch(1)
    assert list(s) == list(plain)
    with pytest.raises(ValueError, match="sorted_epochs"):
        DurationBatchSampler(DURATIONS, BUDGET, sorted_epochs=-1)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_utterances_and_equal_batch_counts(world_size):
    for n in (len(DURATIONS), 7):  # also a case where the batch count does not divide
        durs = DURATIONS[:n]
        per_rank = [list(DurationBatchSampler(durs, BUDGET, seed=2, rank=r, world_size=world_size))
                    for r in range(world_size)]
        assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) > 0
        assert sorted(flat(i for b in per_rank for i in b)) == list(range(n))
        for b in per_rank:
            assert all(len(x) * max(durs[i] for i in x) <= BUDGET for x in b)
    dropped = [list(DurationBatchSampler(DURATIONS[:7], BUDGET, rank=r, world_size=2, drop_last=True)) for r in (0, 1)]
    assert len(dropped[0]) == len(dropped[1]) and not set(flat(dropped[0])) & set(flat(dropped[1]))


def test_resume_mid_epoch_yields_exactly_the_remaining_batches():
    s = DurationBatchSampler(DURATIONS, BUDGET, seed=4, world_size=2, rank=1)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(4)
    s.set_epoch(3)
    it = iter(s)
    head = [next(it) for _ in range(5)]
    state = s.state_dict()
    assert state["epoch"] == 3 and state["position"] == 5 and head == full[:5]

    fresh = DurationBatchSampler(DURATIONS, BUDGET, seed=4, world_size=2, rank=1)
    fresh.load_state_dict(state)
    fresh.set_epoch(3)  # what the trainer does at the top of the epoch: keeps the position
    assert list(fresh) == full[5:]
    fresh.set_epoch(4)
    assert fresh.state_dict()["position"] == 0 and len(list(fresh)) == len(fresh)

    # the trainer can record what it consumed (DataLoader workers prefetch ahead)
    assert s.state_dict(batches_consumed=2)["position"] == 2
    with pytest.raises(ValueError, match="num_utterances"):
        DurationBatchSampler(DURATIONS[:-1], BUDGET, seed=4, world_size=2, rank=1).load_state_dict(state)


def test_too_long_utterance_gets_own_batch_and_one_warning(caplog):
    durs = [1.0, 50.0, 1.0, 60.0, 2.0]
    with caplog.at_level(logging.WARNING):
        s = DurationBatchSampler(durs, 10.0, seed=0)
        batches = list(s)
        s.set_epoch(1)
        list(s)
    assert [1] in batches and [3] in batches
    assert sorted(flat(batches)) == list(range(5))
    assert caplog.text.count("longer than max_batch_seconds") == 1


class _LenTask:
    def collate(self, utts):
        n = len(utts)
        return Targets(torch.tensor([u.duration for u in utts]), torch.ones(n, dtype=torch.long),
                       torch.ones(n, dtype=torch.bool))


def test_dataloader_with_workers(tmp_path):
    rng = np.random.default_rng(0)
    utts = []
    for i, sec in enumerate([0.2, 0.3, 0.25, 0.1, 0.35, 0.15]):
        path = tmp_path / f"{i}.wav"
        soundfile.write(path, rng.normal(0, 0.1, int(sec * 16000)).astype(np.float32), 16000)
        utts.append(Utterance(f"u{i}", str(path), sec))
    sampler = DurationBatchSampler([u.duration for u in utts], 0.7, seed=0)
    ds = UtteranceDataset(utts, {"len": _LenTask()}, train=True, speed_factors=(0.9, 1.0, 1.1))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=collate_batch)
    batches = list(loader)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b.ids) == sorted(u.id for u in utts)
    for b in batches:
        assert b.wav.shape[0] == len(b.ids) == b.targets["len"].values.shape[0]
        assert b.wav_lens.max() == b.wav.shape[1]
