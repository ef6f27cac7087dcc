"""PCGrad (Yu et al. 2020): per-task gradients on the shared parameters, projected apart."""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from mtspeech.weighting.base import LossWeighting, _world_size


class PCGradWeighting(LossWeighting):
    """Projecting conflicting gradients (Yu et al. 2020) on the shared parameters.

    For each task gradient g_i (of w_i L_i) and each other task j in random order: if
    g_i · g_j < 0, remove the component of g_i along g_j. The shared parameters get the
    sum of the projected gradients; task-specific parameters get their plain gradients.

    One gradient per task per optimizer step, as in the paper: `backward` (per micro-batch;
    one backward pass per present task) adds each task's gradient of the shared parameters
    to a (K, P) buffer (K tasks, P shared values; an absent task adds nothing) and leaves
    task-specific parameters to accumulate in `.grad`; it communicates nothing.
    `sync_grads` (per optimizer step) projects the rows of the tasks present in the step
    and adds their sum to the shared parameters' `.grad`. So accumulated micro-batches are
    summed, then projected (earlier versions projected each; same with `accum_steps = 1`).

    Under DDP (`syncs_model_grads`), with every micro-batch under `ddp.no_sync()`,
    `sync_grads(model_params)` does one all-reduce per step of one flat buffer (the (K, P)
    stack, the tasks' presence counts and the local gradients of all other model and
    weighting parameters), averages over the R ranks, and only then projects, alike on
    every rank (the random order is seeded by `seed` and the step). The projection thus
    acts on G_k = (1/R) Σ_ranks Σ_micro-batches ∇(scaled w_k L_k). If every rank's L_k is a
    mean over the same number of items (utterances, or the frames/tokens the task
    normalises by), G_k is the gradient over the union of the ranks' batches and the update
    equals one process on that union (same `accum_steps`) up to float rounding,
    whatever R. With uneven batches, or a task labelled on only some ranks, G_k is the
    mean of the ranks' means (an absent task's zero still counts in 1/R), the
    approximation plain DDP makes too. (Earlier versions averaged each rank's projected
    sum, which depends on R: the projection is nonlinear.) A parameter with no gradient
    on any rank keeps `.grad = None`.

    The buffer is transient like `.grad`: emptied by `sync_grads` and `zero_grad`, so
    `state_dict()` (empty) need not hold it. `backward` for a new step while it still
    holds an older step's gradients raises.
    """

    syncs_model_grads = True

    def __init__(self, task_names: Iterable[str], static_weights: Mapping[str, float], seed: int = 0):
        super().__init__(task_names, static_weights)
        self.seed = seed
        self._shared: list[nn.Parameter] | None = None  # of the last backward
        self._task_grads: torch.Tensor | None = None  # (K, P): this step's shared-parameter gradients
        self._task_seen: torch.Tensor | None = None  # (K,): micro-batches each task was present in
        self._step: int | None = None  # the step being accumulated (seeds the projection order)

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        shared_params: Iterable[nn.Parameter],
        step: int,
        scale_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Accumulate this micro-batch's per-task shared gradients; returns the total (detached).

        Shared parameters' `.grad` is left as it was: they get the projected sum in
        `sync_grads`. Nothing is communicated.
        """
        names = self._present(losses)
        if not names:
            raise ValueError("backward() got no losses")
        shared = [p for p in shared_params if p.requires_grad]
        self._open(shared, int(step))
        weighted = [self.static[n] * losses[n] for n in names]
        scaled = [scale_fn(x) if scale_fn is not None else x for x in weighted]
        for n in names:
            self._task_seen[self.task_names.index(n)] += 1
        if not shared:  # nothing to project: one plain backward
            differentiable = [x for x in scaled if x.requires_grad]
            if differentiable:
                sum(differentiable).backward()
            return sum(weighted).detach()

        # One backward per task: task-specific parameters accumulate in .grad as usual, the
        # shared ones' .grad is moved into the task's row after each (and restored at the end).
        previous = [p.grad for p in shared]
        for p in shared:
            p.grad = None
        todo = [(n, x) for n, x in zip(names, scaled) if x.requires_grad]
        for i, (n, x) in enumerate(todo):
            x.backward(retain_graph=i + 1 < len(todo))
            row = self._task_grads[self.task_names.index(n)]
            offset = 0
            for p in shared:
                if p.grad is not None:
                    row[offset: offset + p.numel()] += p.grad.reshape(-1)
                    p.grad = None
                offset += p.numel()
        for p, prev in zip(shared, previous):
            p.grad = prev
        return sum(weighted).detach()

    def _open(self, shared: list[nn.Parameter], step: int) -> None:
        """Start this step's (K, P) buffer, or check that `backward` continues the open one."""
        if self._task_grads is not None:
            if step != self._step:
                raise RuntimeError(
                    f"PCGrad: backward() for step {step} while step {self._step}'s task gradients are "
                    "still accumulated: call sync_grads() once per optimizer step, or zero_grad() to drop them")
            if len(shared) != len(self._shared) or any(a is not b for a, b in zip(shared, self._shared)):
                raise RuntimeError("PCGrad: the shared parameters changed within one optimizer step")
            return
        # fp32 at least (bf16/fp16 sums of many micro-batches lose too much), fp64 kept.
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in shared), torch.float32)
        device = shared[0].device if shared else torch.device("cpu")
        k, numel = len(self.task_names), sum(p.numel() for p in shared)
        self._shared, self._step = shared, step
        self._task_grads = torch.zeros(k, numel, dtype=dtype, device=device)
        self._task_seen = torch.zeros(k, dtype=dtype, device=device)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop this step's accumulated task gradients (and those of own parameters, if any)."""
        super().zero_grad(set_to_none)
        self._task_grads = self._task_seen = self._step = None

    def sync_grads(self, model_params: list[nn.Parameter] | None = None) -> None:
        """Project the step's accumulated task gradients into the shared parameters' `.grad`.

        Under DDP first average, in one all-reduce, the (K, P) stack and the gradients of
        `model_params` (all of the model's parameters; the shared ones are skipped) and of
        this module's own parameters. Call once per optimizer step on every rank.
        """
        distributed = _world_size() > 1
        if distributed and model_params is None:
            raise ValueError(
                "PCGradWeighting.sync_grads(model_params) needs the model's parameters under DDP: "
                "run every micro-batch under ddp.no_sync() (syncs_model_grads is True) and pass them")
        if self._task_grads is None:
            if distributed:  # the other ranks are waiting in the all-reduce below
                raise RuntimeError("PCGrad: sync_grads() on a rank without backward() since the last sync")
            return
        task_grads, seen = self._task_grads, self._task_seen
        if distributed:
            shared_ids = {id(p) for p in self._shared}
            others = list({id(p): p for p in [*model_params, *self.parameters()] if id(p) not in shared_ids}.values())
            task_grads, seen = _average_over_ranks(task_grads, seen, others)
        present = (seen > 0).nonzero().flatten().tolist()
        if present:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._step)
            projected = pcgrad_project([task_grads[k] for k in present], generator)
            offset = 0
            for p in self._shared:
                g = projected[offset: offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
                p.grad = g if p.grad is None else p.grad + g
        self._task_grads = self._task_seen = self._step = None


def _average_over_ranks(
    task_grads: torch.Tensor, task_seen: torch.Tensor, params: list[nn.Parameter]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One all-reduce of [task_grads (K, P) | task_seen (K,) | params' grads | has-grad flags].

    Returns the averaged task_grads (K, P) and task_seen (K,) (> 0 where some rank saw the
    task); writes the averaged gradients into `params`, where any rank had one.
    """
    dtype, device = task_grads.dtype, task_grads.device
    grads = [p.grad.reshape(-1).to(device, dtype) if p.grad is not None
             else torch.zeros(p.numel(), dtype=dtype, device=device) for p in params]
    flags = torch.tensor([float(p.grad is not None) for p in params], dtype=dtype, device=device)
    flat = torch.cat([task_grads.reshape(-1), task_seen, *grads, flags])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    k, numel = task_grads.shape
    offset = k * numel + k
    for p, flag in zip(params, flat[offset + sum(q.numel() for q in params):].tolist()):
        g = flat[offset: offset + p.numel()]
        offset += p.numel()
        if flag > 0:  # copied: a view would keep the whole buffer alive through the step
            p.grad = g.view_as(p).to(p.device, p.dtype, copy=True)
    return flat[: k * numel].view(k, numel), flat[k * numel: k * numel + k]


def pcgrad_project(grads: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """Flat task gradients (each (P,)) → sum of their PCGrad projections (P,)."""
    out = torch.zeros_like(grads[0])
    for i, g in enumerate(grads):
        g = g.clone()
        for j in torch.randperm(len(grads), generator=generator).tolist():
            if j == i:
                continue
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g -= dot / grads[j].pow(2).sum().clamp(min=1e-20) * grads[j]
        out += g
    return out
