"""GradNorm (Chen et al. 2018): task weights learned to balance the tasks' gradient norms."""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from mtspeech.weighting.base import LossWeighting, _world_size

log = logging.getLogger(__name__)


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
