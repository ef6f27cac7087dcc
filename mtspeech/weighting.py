"""How per-task losses become one update: static, uncertainty, DWA, PCGrad and GradNorm behind one interface.

Every strategy is a `LossWeighting` (an `nn.Module`, so it can own learned parameters and
its state travels in `state_dict()` for exact resume):

    combine(losses, step) -> total          losses: {task name: scalar tensor}
    backward(losses, shared_params, step)   default: combine(...).backward(); returns total (detached)
    weights() -> {task: effective weight}   for logging
    sync_grads(model_params)                once per optimizer step: finish and (DDP) average grads
    syncs_model_grads: bool                 True: the trainer must run every micro-batch under
                                            `ddp.no_sync()`; `sync_grads` averages the model's grads
    zero_grad()                             drops accumulated gradients (also call it whenever the
                                            trainer discards an accumulation window)

A task missing from `losses` contributes nothing this step. The trainer should leave out a
task whose batch has no present label (`not targets.present.any()`): its zero loss would
otherwise pull the uncertainty term `s_k` down and dilute DWA's loss averages.

The configured task weights (`weight:` in each task block) are the static weights; the
adaptive strategies start from them (uncertainty: `s_k = -log w_k`) or scale by them (DWA,
PCGrad; GradNorm aims the tasks' gradient norms at their ratio), so `weight: 1.0` everywhere
gives the method as published.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightingConfig:
    """`kind`: static | uncertainty | dwa | pcgrad | gradnorm."""

    kind: str = "static"
    temperature: float = 2.0  # DWA softmax temperature T
    window_steps: int = 200  # DWA: steps per loss-averaging window (stands in for an epoch)
    seed: int = 0  # PCGrad: seeds the per-step random projection order
    alpha: float = 1.5  # GradNorm: strength of the pull towards equal training rates (the paper's α)
    lr: float = 0.01  # GradNorm: step size of the task weights (per step; their mean is 1)


class LossWeighting(nn.Module):
    """Base: holds the task order and static weights; default backward.

    Args:
        task_names: every configured task, in a fixed order.
        static_weights: task name → configured weight.
    """

    # False: the trainer lets DDP average the model's gradients (on the last micro-batch of
    # each optimizer step). True: every micro-batch runs under `ddp.no_sync()` and
    # `sync_grads(model_params)` averages them.
    syncs_model_grads: bool = False

    def __init__(self, task_names: Iterable[str], static_weights: Mapping[str, float]):
        super().__init__()
        self.task_names = list(task_names)
        missing = [n for n in self.task_names if n not in static_weights]
        if missing:
            raise ValueError(f"no static weight for task(s) {missing}")
        self.static = {n: float(static_weights[n]) for n in self.task_names}

    def _present(self, losses: Mapping[str, torch.Tensor]) -> list[str]:
        unknown = sorted(set(losses) - set(self.task_names))
        if unknown:
            raise KeyError(f"loss for unknown task(s) {unknown}; configured: {self.task_names}")
        return [n for n in self.task_names if n in losses]

    def combine(self, losses: Mapping[str, torch.Tensor], step: int) -> torch.Tensor:
        """{task: scalar loss} → weighted total (scalar, with graph). Default: static sum."""
        names = self._present(losses)
        if not names:
            raise ValueError("combine() got no losses")
        return sum(self.static[n] * losses[n] for n in names)

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        shared_params: Iterable[nn.Parameter],
        step: int,
        scale_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Accumulate gradients of the combined loss; returns the total (detached).

        `scale_fn` is applied to what is differentiated (e.g. `GradScaler.scale` for fp16).
        Call this once per micro-batch instead of `combine` (DWA records losses in combine).
        """
        total = self.combine(losses, step)
        (scale_fn(total) if scale_fn is not None else total).backward()
        return total.detach()

    def weights(self) -> dict[str, float]:
        """Effective weight of every task (for logging)."""
        return dict(self.static)

    def sync_grads(self, model_params: list[nn.Parameter] | None = None) -> None:
        """Average the gradients of this module's own parameters over DDP ranks.

        They are not inside the DDP-wrapped model; call once per optimizer step, after the
        last micro-batch's backward and before clipping/stepping. `model_params` is ignored
        here: with `syncs_model_grads = False` DDP has averaged the model's gradients.
        """
        if _world_size() == 1:
            return
        for p in self.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()


class StaticWeighting(LossWeighting):
    """Σ_k w_k L_k with the configured weights; no state."""


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty (Kendall, Gal & Cipolla 2018): Σ_k exp(-s_k) L_k + s_k.

    `s_k = log σ_k²` is learned (add `parameters()` to the optimizer, no weight decay);
    its optimum is `log L_k`, so a task with a lower loss ends with a higher weight
    `exp(-s_k)`. Starts at `s_k = -log w_k` (the configured weight).
    """

    def __init__(self, task_names: Iterable[str], static_weights: Mapping[str, float]):
        super().__init__(task_names, static_weights)
        bad = [n for n, w in self.static.items() if w <= 0]
        if bad:
            raise ValueError(f"uncertainty weighting needs positive task weights; got {bad}")
        self.log_vars = nn.Parameter(torch.tensor([-math.log(self.static[n]) for n in self.task_names]))

    def combine(self, losses: Mapping[str, torch.Tensor], step: int) -> torch.Tensor:
        names = self._present(losses)
        if not names:
            raise ValueError("combine() got no losses")
        total = 0.0
        for n in names:
            s = self.log_vars[self.task_names.index(n)]
            total = total + torch.exp(-s) * losses[n] + s
        return total

    def weights(self) -> dict[str, float]:
        w = torch.exp(-self.log_vars.detach()).tolist()
        return dict(zip(self.task_names, w))


class DWAWeighting(LossWeighting):
    """Dynamic weight average (Liu, Johns & Davison 2019), over step windows.

    λ_k = K · softmax_k(r_k / T) with r_k = L̄_k(previous window) / L̄_k(the one before),
    where L̄ is the task's mean loss over a window of `window_steps` steps (the paper uses
    epochs; windows keep it responsive on long epochs and independent of epoch length).
    A task whose loss stops falling gets r ≈ 1, above the falling tasks, hence more weight.
    λ = 1 until two windows have closed. Total: Σ_k λ_k w_k L_k.
    """

    def __init__(
        self,
        task_names: Iterable[str],
        static_weights: Mapping[str, float],
        temperature: float = 2.0,
        window_steps: int = 200,
    ):
        super().__init__(task_names, static_weights)
        if temperature <= 0 or window_steps < 1:
            raise ValueError(f"DWA needs temperature > 0 and window_steps >= 1, got {temperature}, {window_steps}")
        self.temperature = temperature
        self.window_steps = window_steps
        k = len(self.task_names)
        self.register_buffer("lambdas", torch.ones(k))
        self.register_buffer("window_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("window_count", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("history", torch.full((2, k), float("nan"), dtype=torch.float64))
        self.register_buffer("window_index", torch.tensor(-1, dtype=torch.long))

    def combine(self, losses: Mapping[str, torch.Tensor], step: int) -> torch.Tensor:
        names = self._present(losses)
        if not names:
            raise ValueError("combine() got no losses")
        window = int(step) // self.window_steps
        if int(self.window_index) >= 0 and window != int(self.window_index):
            self._close_window()
        self.window_index.fill_(window)
        for n in names:
            k = self.task_names.index(n)
            self.window_sum[k] += losses[n].detach().double().to(self.window_sum.device)
            self.window_count[k] += 1
        return sum(self.lambdas[self.task_names.index(n)] * self.static[n] * losses[n] for n in names)

    def _close_window(self) -> None:
        sums, counts = self.window_sum.clone(), self.window_count.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
        self.history.copy_(torch.stack([self.history[1], means]))
        ratio = self.history[1] / self.history[0]
        if torch.isfinite(ratio).any():
            # A task not seen in one of the two windows is treated as neutral (r = 1).
            ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
            lam = len(self.task_names) * torch.softmax(ratio / self.temperature, dim=0)
            self.lambdas.copy_(lam.to(self.lambdas.dtype))
            log.debug("DWA window %d: loss ratios %s → weights %s",
                      int(self.window_index), ratio.tolist(), lam.tolist())
        self.window_sum.zero_()
        self.window_count.zero_()

    def weights(self) -> dict[str, float]:
        return {n: float(self.lambdas[k]) * self.static[n] for k, n in enumerate(self.task_names)}


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


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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


class GradNormWeighting(LossWeighting):
    """GradNorm (Chen et al. 2018): learn task weights λ_k that balance gradient norms.

    Total: Σ_k λ_k L_k. With G_k = ‖∇_W λ_k L_k‖ over the shared parameters W (the whole
    encoder: tasks read different layers, so no single "last shared layer" serves them all),
    L̃_k = L_k / L_k(0) and r_k = L̃_k / mean_j L̃_j, GradNorm descends
    Σ_k |G_k − Ḡ · r_k^α · w_k / w̄| in λ, the target held constant (w: the configured weights,
    all 1 in the paper). A task that trains slower (larger r_k) is aimed at a larger gradient.
    Since G_k = λ_k ‖∇_W L_k‖, the gradient in λ_k is exact without second-order terms:
    sign(G_k − T_k) ‖∇_W L_k‖. It is divided by mean_j ‖∇_W L_j‖, so a step moves a weight by
    at most K·`lr` whatever the loss scale (fp16 scaling, accumulation), lr on average; then
    λ is clipped at a small positive floor and renormalised to Σ_k λ_k = Σ_k w_k (λ starts
    at w).

    The weights are buffers updated here in `sync_grads`, once per optimizer step, not by
    the trainer's optimizer: its gradient clipping would otherwise see the gradient norms
    twice. `backward` (per micro-batch) measures each present task's G_k with one
    `autograd.grad` over W (K extra backward passes through the encoder, the method's cost),
    then backpropagates Σ λ_k L_k once, so DDP averages the model's gradients as usual.
    L_k(0) is the mean loss of the first step in which task k is present.

    Under DDP, `sync_grads` all-reduces one small buffer (per task: the summed norms, the
    summed losses and the micro-batch count), so every rank makes the same update and the
    weights stay equal without further communication. G_k is then the mean of the ranks'
    norms, not the norm of the mean gradient: a slight overestimate of every task's norm
    from batch noise, which the ratio to Ḡ largely cancels.
    """

    def __init__(
        self,
        task_names: Iterable[str],
        static_weights: Mapping[str, float],
        alpha: float = 1.5,
        lr: float = 0.01,
    ):
        super().__init__(task_names, static_weights)
        bad = [n for n, w in self.static.items() if w <= 0]
        if bad:
            raise ValueError(f"gradnorm needs positive task weights; got {bad}")
        if alpha < 0 or lr <= 0:
            raise ValueError(f"gradnorm needs alpha >= 0 and lr > 0, got {alpha}, {lr}")
        self.alpha, self.lr = alpha, lr
        self.weight_sum = sum(self.static.values())  # Σ λ_k, kept by renormalising
        static = torch.tensor([self.static[n] for n in self.task_names], dtype=torch.float64)
        self.register_buffer("target_ratio", static / static.mean(), persistent=False)
        self.register_buffer("lambdas", static.clone())
        self.register_buffer("initial_losses", torch.full_like(static, float("nan")))
        self._sums: torch.Tensor | None = None  # (3, K): this step's norms, losses, micro-batch counts

    def combine(self, losses: Mapping[str, torch.Tensor], step: int) -> torch.Tensor:
        names = self._present(losses)
        if not names:
            raise ValueError("combine() got no losses")
        return sum(float(self.lambdas[self.task_names.index(n)]) * losses[n] for n in names)

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        shared_params: Iterable[nn.Parameter],
        step: int,
        scale_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Measure each present task's shared-gradient norm, then backpropagate the total."""
        names = self._present(losses)
        if not names:
            raise ValueError("backward() got no losses")
        shared = [p for p in shared_params if p.requires_grad]
        if self._sums is None:
            self._sums = torch.zeros(3, len(self.task_names), dtype=torch.float64, device=self.lambdas.device)
        for n in names:
            k = self.task_names.index(n)
            weighted = float(self.lambdas[k]) * losses[n]
            scaled = scale_fn(weighted) if scale_fn is not None else weighted
            if shared and scaled.requires_grad:
                grads = torch.autograd.grad(scaled, shared, retain_graph=True, allow_unused=True)
                squares = [g.double().pow(2).sum() for g in grads if g is not None]
                if squares:  # none: the task does not reach the shared parameters
                    self._sums[0, k] += torch.stack(squares).sum().sqrt().to(self._sums.device)
            self._sums[1, k] += losses[n].detach().double().to(self._sums.device)
            self._sums[2, k] += 1
        return super().backward(losses, shared, step, scale_fn)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop this step's measurements (a discarded accumulation window)."""
        super().zero_grad(set_to_none)
        self._sums = None

    def sync_grads(self, model_params: list[nn.Parameter] | None = None) -> None:
        """Average this step's measurements over ranks and update the task weights."""
        sums = self._sums if self._sums is not None else torch.zeros(
            3, len(self.task_names), dtype=torch.float64, device=self.lambdas.device)
        self._sums = None
        if _world_size() > 1:
            sums = sums.clone()
            dist.all_reduce(sums)
        norm_sum, loss_sum, seen = sums
        present = seen > 0
        if not present.any():
            return
        mean_loss = torch.where(present, loss_sum / seen.clamp(min=1), torch.full_like(loss_sum, float("nan")))
        first = present & torch.isnan(self.initial_losses)
        self.initial_losses[first] = mean_loss[first]
        measured = present & (norm_sum > 0)
        if int(measured.sum()) < 2:  # nothing to balance
            return
        norms = norm_sum[measured] / seen[measured]  # G_k, each scaled like the model's gradients
        relative = mean_loss[measured] / self.initial_losses[measured]
        if not (torch.isfinite(norms).all() and torch.isfinite(relative).all()):
            log.warning("GradNorm: non-finite gradient norms or losses %s; weights left as they were", norms.tolist())
            return
        mean_norm = norms.mean()
        ratio = self.target_ratio[measured]
        target = mean_norm * (relative / relative.mean()) ** self.alpha * ratio / ratio.mean()
        lam = self.lambdas[measured]
        raw = norms / lam  # ‖∇_W L_k‖: ∂G_k/∂λ_k
        grad = torch.sign(norms - target) * raw / raw.mean()
        lambdas = self.lambdas.clone()
        lambdas[measured] = (lam - self.lr * grad).clamp(min=1e-3 * float(self.lambdas.sum()))
        self.lambdas.copy_(lambdas * (self.weight_sum / lambdas.sum()))

    def weights(self) -> dict[str, float]:
        return {n: float(self.lambdas[k]) for k, n in enumerate(self.task_names)}


WEIGHTINGS: dict[str, type] = {
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DWAWeighting,
    "pcgrad": PCGradWeighting,
    "gradnorm": GradNormWeighting,
}


def build_weighting(
    cfg: WeightingConfig | Mapping[str, Any] | None,
    task_names: Iterable[str],
    static_weights: Mapping[str, float],
) -> LossWeighting:
    """Build the configured strategy (None → static). A dict is validated as `weighting`."""
    if cfg is None:
        cfg = WeightingConfig()
    elif isinstance(cfg, Mapping):
        from mtspeech.config import from_dict

        cfg = from_dict(WeightingConfig, dict(cfg), "weighting")
    if cfg.kind not in WEIGHTINGS:
        raise ValueError(f"weighting.kind: {cfg.kind!r} is not one of {sorted(WEIGHTINGS)}")
    names = list(task_names)
    if cfg.kind == "dwa":
        return DWAWeighting(names, static_weights, cfg.temperature, cfg.window_steps)
    if cfg.kind == "pcgrad":
        return PCGradWeighting(names, static_weights, cfg.seed)
    if cfg.kind == "gradnorm":
        return GradNormWeighting(names, static_weights, cfg.alpha, cfg.lr)
    return WEIGHTINGS[cfg.kind](names, static_weights)
