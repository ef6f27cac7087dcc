"""The inner loop every adaptation shares: the model's ASR CTC loss through a parameter set's
tensors, and a few Adam steps on it.

`mtspeech adapt`, Reptile's inner loop and the adaptation benchmark all call `fine_tune`, so
what the benchmark measures is what the command does. The model itself is never written: its
weights are frozen and the set's tensors are substituted with `torch.func.functional_call`
(the joint model's own `forward` and `losses`, only the ASR task's targets given, so only its
loss is computed), which also lets input-norm train CMVN statistics that are buffers.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from mtspeech.adaptation.inputs import check_lengths
from mtspeech.adaptation.param_sets import ParamSet
from mtspeech.data.dataset import Batch


@dataclass
class FineTuneResult:
    """The adapted tensors, the ASR loss before each step and after the last (steps + 1
    values, on the adaptation utterances) and the wall time of the steps."""

    trainable: dict[str, torch.Tensor]
    losses: list[float]
    seconds: float


@contextlib.contextmanager
def frozen(model: nn.Module):
    """The model in eval mode with no parameter requiring a gradient (restored on exit).

    Eval mode because k is tiny: dropout and SpecAugment noise would swamp the signal of one
    utterance, and every norm in the encoder is a LayerNorm, which has no batch statistics to
    freeze. No gradients for the frozen weights: computing them would cost a backward through
    every layer's weights for nothing."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def batch_loss(model: nn.Module, pset: ParamSet, trainable: dict[str, torch.Tensor], batch: Batch,
               total_units: float, device: torch.device, check: bool = False) -> torch.Tensor:
    """One batch's share of the ASR loss (its loss per transcript unit, weighted by its units out
    of `total_units`), with the set's tensors at `trainable`: differentiable in `trainable`."""
    name = model.asr_task
    b = batch.to(device)
    losses, _, lens = functional_call(model, pset.overrides(trainable), (b.wav, b.wav_lens, {name: b.targets[name]}))
    if check:
        check_lengths(b, lens.cpu(), name)
    return losses[name] * (float(b.targets[name].lens.sum()) / total_units)


def units(batches: list[Batch], task_name: str) -> float:
    """Transcript units of task `task_name` in `batches`: what `batch_loss` weighs by."""
    return float(sum(int(b.targets[task_name].lens.sum()) for b in batches))


def _batch_losses(model: nn.Module, pset: ParamSet, trainable: dict[str, torch.Tensor], batches: list[Batch],
                  device: torch.device, backward: bool, check: bool = False) -> float:
    """The ASR loss over all batches (per transcript unit, as the task's loss is); with
    `backward`, its gradient accumulated into `trainable`'s .grad, one batch at a time."""
    total_units = units(batches, model.asr_task)
    total = 0.0
    for b in batches:
        loss = batch_loss(model, pset, trainable, b, total_units, device, check)
        if backward:
            loss.backward()
        total += float(loss.detach())
    return total


def asr_loss(model: nn.Module, pset: ParamSet, trainable: dict[str, torch.Tensor], batches: list[Batch],
             device: str | torch.device = "cpu") -> float:
    """The ASR CTC loss of `batches` with the set's tensors at `trainable` (no gradient)."""
    with frozen(model), torch.no_grad():
        return _batch_losses(model, pset, trainable, batches, torch.device(device), backward=False)


def fine_tune(model: nn.Module, pset: ParamSet, init: dict[str, torch.Tensor], batches: list[Batch],
              steps: int, lr: float, device: str | torch.device = "cpu", progress: bool = False,
              desc: str = "adapt") -> FineTuneResult:
    """`steps` full-batch Adam steps on the set's tensors from `init`, on the ASR loss of
    `batches`; every other weight of `model` stays as it is (it is not modified)."""
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    device = torch.device(device)
    trainable = {k: v.detach().clone().to(device).requires_grad_(True) for k, v in init.items()}
    opt = torch.optim.Adam(trainable.values(), lr=lr)
    losses = []
    t0 = time.perf_counter()
    with frozen(model), torch.enable_grad():  # callers may hold no_grad; these steps need it
        for step in tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False, dynamic_ncols=True):
            opt.zero_grad(set_to_none=True)
            losses.append(_batch_losses(model, pset, trainable, batches, device, backward=True, check=step == 0))
            opt.step()
        seconds = time.perf_counter() - t0  # the steps only: what adapting costs, not reporting on it
        with torch.no_grad():
            losses.append(_batch_losses(model, pset, trainable, batches, device, backward=False, check=steps == 0))
    return FineTuneResult({k: v.detach().cpu() for k, v in trainable.items()}, losses, seconds)
