"""GradNorm under DDP (two gloo processes on the CPU): its norm measurements (autograd.grad)
leave DDP's own gradient averaging intact, and one all-reduce per step keeps the task weights
equal on every rank, equal to one process that accumulates the ranks' halves as micro-batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddp_helpers import run_ranks
from mtspeech.weighting import GradNormWeighting

NAMES = ["asr", "vad"]
STATIC = {"asr": 1.0, "vad": 0.5}
STEPS, BATCH = 3, 8
TIMEOUT_S = 120


class Toy(nn.Module):
    """A shared trunk and one head per task (float64: rounding far below the tolerance)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16))
        self.heads = nn.ModuleDict({n: nn.Linear(16, 1) for n in NAMES})
        self.double()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {n: head(z)[:, 0] for n, head in self.heads.items()}


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(BATCH, 8, generator=g, dtype=torch.float64), torch.randn(BATCH, generator=g, dtype=torch.float64)


def train(rank: int, world_size: int) -> dict:
    """world_size 2: this rank's half of each batch under DDP. 1: both halves as two
    accumulated micro-batches in one process. Returns every step's weights and trunk grads."""
    model = Toy()
    module = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    weighting = GradNormWeighting(NAMES, STATIC, lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    halves = [rank] if world_size > 1 else [0, 1]
    out = {"weights": [], "grads": []}
    for step in range(STEPS):
        x, y = data(step)
        for half in halves:
            rows = slice(half * BATCH // 2, (half + 1) * BATCH // 2)
            pred = module(x[rows])
            losses = {"asr": ((pred["asr"] - y[rows]) ** 2).mean(),
                      "vad": ((pred["vad"] + (1 + step) * y[rows]) ** 2).mean()}
            weighting.backward(losses, list(model.trunk.parameters()), step, scale_fn=lambda t: t / len(halves))
        weighting.sync_grads(list(model.parameters()))
        out["weights"].append(weighting.weights())
        out["grads"].append(model.trunk[0].weight.grad.clone())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return out


def test_gradnorm_ddp_weights_agree_across_ranks_and_with_one_process(tmp_path):
    ranks = run_ranks(train, tmp_path, timeout_s=TIMEOUT_S)
    single = train(0, 1)
    for step in range(STEPS):
        assert ranks[0]["weights"][step] == ranks[1]["weights"][step]
        assert ranks[0]["weights"][step] == pytest.approx(single["weights"][step], rel=1e-9)
        for r in ranks:  # DDP still averaged the model's gradients
            torch.testing.assert_close(r["grads"][step], single["grads"][step])
    assert single["weights"][-1] != pytest.approx(STATIC)  # the weights did move
