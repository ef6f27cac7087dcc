"""The `LossWeighting` interface and the strategies that weigh losses only: static,
uncertainty (Kendall et al. 2018) and DWA (Liu et al. 2019)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

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


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
