"""Utterances → audio + every task's targets, batched.

The dataset only loads audio (and speed-perturbs it in training); each task builds its own
targets from the batch's `Utterance` records through `task.collate(utts)`, so adding a task
never touches this file. A file that cannot be read is logged and skipped — one corrupt
file must not end a multi-day run — and a batch whose every file failed collates to None
(the trainer skips it).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from mtspeech.data.audio import AudioError, load_audio
from mtspeech.data.augment import AugmentConfig, Augmenter, for_epoch
from mtspeech.data.features import speed_perturb
from mtspeech.data.geometry import SAMPLE_RATE
from mtspeech.data.manifest import Utterance

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One batch. `wav` is zero-padded to the longest row.

    ids: list[str] (B); wav: (B,S) float32; wav_lens: (B,) long samples;
    targets: task name → Targets; utts: the (speed-adjusted) utterances, row order.
    """

    ids: list[str]
    wav: torch.Tensor
    wav_lens: torch.Tensor
    targets: dict
    utts: list[Utterance]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(self.ids, self.wav.to(device, non_blocking=non_blocking),
                     self.wav_lens.to(device, non_blocking=non_blocking),
                     {k: t.to(device, non_blocking=non_blocking) for k, t in self.targets.items()}, self.utts)

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True) on custom batch types."""
        return Batch(self.ids, self.wav.pin_memory(), self.wav_lens.pin_memory(),
                     {k: t.pin_memory() for k, t in self.targets.items()}, self.utts)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Example:
    """One loaded utterance on its way to `collate_batch`: `wav` (S,) at 16 kHz; `tasks` is
    the dataset's name → task mapping (a reference: collation runs in the same worker)."""

    utt: Utterance
    wav: torch.Tensor
    tasks: Mapping


class UtteranceDataset(torch.utils.data.Dataset):
    """Map-style dataset over utterances; `dataset[i]` → `Example`, or None if unreadable.

    Args:
        utts: the manifest's utterances.
        tasks: task name → object with `collate(utts) -> Targets` (the model's task modules).
        train: enables speed perturbation.
        speed_factors: factors drawn uniformly per utterance in training (None or (1.0,): off).
        seed: with the item index, picks each item's speed factor (the trainer mixes the
            epoch into it, so factors differ between epochs yet survive a resume exactly).
        sample_rate: rate of the loaded audio.
        perturbed_speaker: keep the speaker label on a speed- or formant-perturbed copy. Off
            by default: resampling moves pitch and formants with the speed (a formant shift
            moves the formants), so the copy sounds like another person, and training a
            speaker head on it is label noise.
        augment: noise / reverberation / gain / formant shift (`mtspeech.data.augment`),
            training only; babble draws from these same utterances. Seeded like the speed factor.
    """

    def __init__(self, utts: Sequence[Utterance], tasks: Mapping, train: bool,
                 speed_factors: Sequence[float] | None = (0.9, 1.0, 1.1), seed: int = 0,
                 sample_rate: int = SAMPLE_RATE, perturbed_speaker: bool = False,
                 augment: AugmentConfig | None = None):
        self.utts = list(utts)
        self.tasks = dict(tasks)
        self.train = train
        self.speed_factors = tuple(speed_factors) if (train and speed_factors) else (1.0,)
        self.seed = seed
        self.sample_rate = sample_rate
        self.perturbed_speaker = perturbed_speaker
        self.augmenter = (Augmenter(augment, len(self.utts), self._pool_audio, sample_rate)
                          if train and augment is not None else None)

    def __len__(self) -> int:
        return len(self.utts)

    def _factor(self, index: int) -> float:
        """The speed factor of item `index`: a pure function of (seed, index), so the same
        batch gets the same perturbation whatever worker loads it and after a resume."""
        if len(self.speed_factors) == 1:
            return self.speed_factors[0]
        return random.Random(self.seed * 1_000_003 + index).choice(self.speed_factors)

    def __getitem__(self, index: int) -> Example | None:
        utt = self.utts[index]
        try:
            wav = load_audio(utt.audio, self.sample_rate)
        except AudioError as e:
            log.warning("skipping utterance %s: %s", utt.id, e)
            return None
        factor = self._factor(index)
        if factor != 1.0:
            wav = speed_perturb(wav, factor, self.sample_rate)
            utt = perturbed_utterance(utt, factor, wav.numel() / self.sample_rate, self.perturbed_speaker)
        if self.augmenter is not None:
            front, back = self.augmenter.padding(self.seed, index)
            if (front or back) and utt.speech is not None:  # padding is for the VAD labels
                wav = torch.nn.functional.pad(wav, (front, back))
                utt = padded_utterance(utt, front / self.sample_rate, wav.numel() / self.sample_rate)
            wav = self.augmenter(wav, self.seed, index, utt.speech)
            if self.augmenter.changes_voice(self.seed, index) and not self.perturbed_speaker:
                # a formant shift made another voice: unknown, or a speaker of its own
                utt = dataclasses.replace(utt, speaker=self.augmenter.new_speaker(utt.speaker, self.seed, index))
        return Example(utt, wav, self.tasks)

    def _pool_audio(self, index: int) -> torch.Tensor | None:
        """Audio of utterance `index` for babble (None if unreadable)."""
        try:
            return load_audio(self.utts[index].audio, self.sample_rate)
        except AudioError:
            return None

    def collate(self, examples: Sequence[Example | None]) -> Batch | None:
        return collate_batch(examples)


def perturbed_utterance(utt: Utterance, factor: float, duration: float,
                        keep_speaker: bool = False) -> Utterance:
    """A copy of `utt` for audio played `factor`× faster: speech segments scaled by 1/factor,
    `duration` the perturbed audio's actual length in seconds; speaker unknown (None, so
    the speaker task masks the row) unless `keep_speaker`."""
    speech = None if utt.speech is None else [[s / factor, e / factor] for s, e in utt.speech]
    speaker = utt.speaker if keep_speaker else None
    return dataclasses.replace(utt, duration=duration, speech=speech, speaker=speaker)


def padded_utterance(utt: Utterance, front_s: float, duration: float) -> Utterance:
    """A copy of `utt` for its audio after `front_s` seconds of silence were put before it
    (and some after): speech segments shifted, `duration` the padded audio's length."""
    speech = None if utt.speech is None else [[s + front_s, e + front_s] for s, e in utt.speech]
    return dataclasses.replace(utt, duration=duration, speech=speech)


def collate_batch(examples: Sequence[Example | None]) -> Batch | None:
    """Examples → Batch (unreadable ones, None, are dropped); None if nothing is left.

    Pads waveforms with zeros to (B,S) and calls every task's `collate` on the utterances.
    """
    examples = [e for e in examples if e is not None]
    if not examples:
        return None
    lens = torch.tensor([e.wav.numel() for e in examples], dtype=torch.long)
    wav = torch.zeros(len(examples), int(lens.max()), dtype=torch.float32)
    for i, e in enumerate(examples):
        wav[i, : e.wav.numel()] = e.wav
    utts = [e.utt for e in examples]
    targets = {name: task.collate(utts) for name, task in examples[0].tasks.items()}
    return Batch([u.id for u in utts], wav, lens, targets, utts)


def training_loader(utts: Sequence[Utterance], tasks: Mapping, sampler, data_cfg, *, seed: int, epoch: int,
                    train: bool, sample_rate: int = SAMPLE_RATE, pin_memory: bool = False
                    ) -> torch.utils.data.DataLoader:
    """The loader of one epoch: `UtteranceDataset` over `utts` in `sampler`'s batches, with the
    recipe's speed perturbation and augmentation of `epoch` when `train`."""
    dataset = UtteranceDataset(
        utts, dict(tasks), train=train, sample_rate=sample_rate,
        speed_factors=data_cfg.speed_perturb if train else None,
        seed=seed * 100_003 + epoch,
        perturbed_speaker=data_cfg.perturbed_speaker,
        augment=for_epoch(data_cfg.augment, epoch) if train else None,
    )
    # A private generator: creating the loader must not consume the global torch RNG
    # (that would shift dropout/SpecAugment after a resume mid-epoch).
    generator = torch.Generator().manual_seed(seed * 7919 + epoch)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_batch,
        num_workers=data_cfg.num_workers, persistent_workers=False,
        pin_memory=pin_memory, generator=generator,
    )
