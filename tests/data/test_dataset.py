"""UtteranceDataset + collate_batch: padding, per-task targets, speed perturbation, bad files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile
import torch

from mtspeech.data.dataset import Batch, UtteranceDataset, collate_batch
from mtspeech.data.manifest import Utterance
from mtspeech.tasks import Targets


class TextLengthTask:
    """Fake task: the number of characters of each transcript (absent when None)."""

    def collate(self, utts):
        present = torch.tensor([u.text is not None for u in utts])
        return Targets(torch.tensor([len(u.text or "") for u in utts]), torch.ones(len(utts), dtype=torch.long),
                       present)


class SpeechEndTask:
    """Fake time-based task: end of the last speech segment and the duration, in seconds."""

    def collate(self, utts):
        values = torch.tensor([[u.speech[-1][1] if u.speech else 0.0, u.duration] for u in utts])
        return Targets(values, torch.full((len(utts),), 2), torch.tensor([u.speech is not None for u in utts]))


TASKS = {"chars": TextLengthTask(), "speech": SpeechEndTask()}


@pytest.fixture
def utts(tmp_path) -> list[Utterance]:
    rng = np.random.default_rng(0)
    out = []
    for i, seconds in enumerate([0.5, 0.3, 0.4]):
        path = tmp_path / f"u{i}.flac"
        soundfile.write(path, (rng.normal(0, 0.1, int(seconds * 16000))).astype(np.float32), 16000)
        out.append(Utterance(f"u{i}", str(path), seconds, text="HELLO" * (i + 1), speech=[[0.1, seconds - 0.1]],
                             speaker=f"s{i}"))
    out[1] = Utterance("u1", out[1].audio, 0.3)  # no labels at all
    return out


def test_collate_pads_and_calls_every_task(utts):
    ds = UtteranceDataset(utts, TASKS, train=False)
    batch = collate_batch([ds[i] for i in range(3)])
    assert isinstance(batch, Batch) and batch.ids == ["u0", "u1", "u2"] and len(batch) == 3
    assert batch.wav.shape == (3, 8000) and batch.wav_lens.tolist() == [8000, 4800, 6400]
    assert (batch.wav[1, 4800:] == 0).all() and batch.wav[1, :4800].abs().sum() > 0
    assert batch.targets["chars"].values.tolist() == [5, 0, 15]
    assert batch.targets["chars"].present.tolist() == [True, False, True]
    assert batch.targets["speech"].values[0].tolist() == pytest.approx([0.4, 0.5])
    assert batch.utts == utts  # evaluation: no perturbation, records untouched
    moved = batch.to("cpu")
    assert torch.equal(moved.wav, batch.wav) and moved.targets["chars"].values.tolist() == [5, 0, 15]
    if torch.cuda.is_available():
        assert batch.pin_memory().wav.is_pinned()


def test_speed_perturbation_scales_time_labels(utts):
    ds = UtteranceDataset(utts, TASKS, train=True, speed_factors=(1.25,))
    ex = ds[0]
    assert ex.wav.numel() == 6400  # 0.5 s played 1.25× faster
    assert ex.utt.duration == pytest.approx(0.4) and ex.utt.speech == [[pytest.approx(0.08), pytest.approx(0.32)]]
    assert utts[0].duration == 0.5  # the original record is left alone
    # A perturbed voice is another voice: its speaker label is dropped unless asked for.
    assert utts[0].speaker is not None and ex.utt.speaker is None
    kept = UtteranceDataset(utts, TASKS, train=True, speed_factors=(1.25,), perturbed_speaker=True)
    assert kept[0].utt.speaker == utts[0].speaker
    assert UtteranceDataset(utts, TASKS, train=False, speed_factors=(1.25,))[0].wav.numel() == 8000
    # The factor is a pure function of (seed, index): repeatable for one item (so workers and
    # resumes agree), varied across seeds (the trainer mixes the epoch into the seed).
    mixed = [UtteranceDataset(utts, TASKS, train=True, speed_factors=(0.9, 1.0, 1.1), seed=s)
             for s in range(30)]
    assert {mixed[3][0].wav.numel() for _ in range(5)} == {mixed[3][0].wav.numel()}
    assert {ds[0].wav.numel() for ds in mixed} == {8889, 8000, 7273}


def test_corrupt_file_is_logged_and_skipped(utts, tmp_path, caplog):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + b"\x00" * 50)
    utts = [utts[0], Utterance("bad", str(bad), 1.0, text="X"), Utterance("gone", str(tmp_path / "no.wav"), 1.0),
            utts[2]]
    ds = UtteranceDataset(utts, TASKS, train=True, speed_factors=None)
    with caplog.at_level(logging.WARNING):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_batch)
        (batch,) = list(loader)
    assert batch.ids == ["u0", "u2"] and batch.targets["chars"].values.tolist() == [5, 15]
    assert "bad.flac" in caplog.text and "no.wav" in caplog.text
    assert collate_batch([ds[1], ds[2]]) is None
