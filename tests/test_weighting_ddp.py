"""PCGrad under DDP (two gloo processes on the CPU): per-task gradients are averaged once per
optimizer step and only then projected, so the result equals one process on the whole batch.

The two ranks are child processes set up as torchrun sets them up (tests/ddp_helpers.py); each
saves what it saw for the tests to compare.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ddp_helpers import run_ranks
from mtspeech.weighting import PCGradWeighting

NAMES = ["asr", "vad"]
STATIC = {"asr": 1.0, "vad": 0.5}
ACCUM_STEPS = 3
STEPS = 2
BATCH = 8  # per micro-batch, whole batch; rank r of R gets the r-th 1/R of it
TIMEOUT_S = 120  # both ranks together: a hang fails the test instead of blocking CI


class Toy(nn.Module):
    """A shared two-layer trunk, a head per task and a parameter no task uses (float64, so
    that float rounding stays far below the tolerance)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32))
        self.heads = nn.ModuleDict({n: nn.Linear(32, 1) for n in NAMES})
        self.unused = nn.Parameter(torch.zeros(3))
        self.double()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 8) → {task: (B,)}."""
        z = self.trunk(x)
        return {n: head(z)[:, 0] for n, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())


def micro_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS × ACCUM_STEPS whole micro-batches: x (BATCH, 8), y (BATCH,)."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 8, generator=g, dtype=torch.float64), torch.randn(BATCH, generator=g, dtype=torch.float64))
            for _ in range(STEPS * ACCUM_STEPS)]


def task_losses(pred: dict[str, torch.Tensor], y: torch.Tensor, micro_batch: int) -> dict[str, torch.Tensor]:
    # Opposite targets, so the tasks' trunk gradients conflict; per-task means over the rank's
    # items, as the trainer's tasks give. The second micro-batch of a step has no vad labels.
    losses = {"asr": ((pred["asr"] - y) ** 2).mean(), "vad": ((pred["vad"] + y) ** 2).mean()}
    if micro_batch == 1:
        del losses["vad"]
    return losses


def train(rank: int, world_size: int, part: tuple[int, int] | None = None) -> dict:
    """The trainer's loop on the toy: every micro-batch under no_sync, backward once each,
    sync_grads once per step, then SGD. `part` (i, n): a single process on the i-th 1/n of each
    batch. Returns every step's gradients (name → tensor or None) and collective counts."""
    model = Toy()
    module = model
    counts = {"all_reduce": 0, "ddp_buckets": 0}
    if world_size > 1:
        module = nn.parallel.DistributedDataParallel(model)

        def counting_hook(state, bucket):  # DDP's own gradient all-reduce, should it run
            counts["ddp_buckets"] += 1
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            return allreduce_hook(None, bucket)

        module.register_comm_hook(None, counting_hook)
        real_all_reduce = dist.all_reduce

        def counting_all_reduce(*args, **kwargs):
            counts["all_reduce"] += 1
            return real_all_reduce(*args, **kwargs)

        dist.all_reduce = counting_all_reduce  # what mtspeech.weighting calls (same module object)
    index, parts = part or (rank, world_size)
    rows = slice(index * BATCH // parts, (index + 1) * BATCH // parts)
    weighting = PCGradWeighting(NAMES, STATIC, seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = micro_batches()
    out = {"grads": [], "in_backward": [], "in_sync": [], "totals": []}
    for step in range(STEPS):
        before = counts["all_reduce"]
        for m in range(ACCUM_STEPS):
            x, y = data[step * ACCUM_STEPS + m]
            no_sync = module.no_sync() if world_size > 1 and weighting.syncs_model_grads else contextlib.nullcontext()
            with no_sync:
                pred = module(x[rows])
            total = weighting.backward(task_losses(pred, y[rows], m), model.shared_parameters(), step,
                                       scale_fn=lambda t: t / ACCUM_STEPS)
            out["totals"].append(total)
        out["in_backward"].append(counts["all_reduce"] - before)
        before = counts["all_reduce"]
        weighting.sync_grads(list(model.parameters()))
        out["in_sync"].append(counts["all_reduce"] - before)
        out["grads"].append({n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad(set_to_none=True)
    out["ddp_buckets"] = counts["ddp_buckets"]
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """What `train` returned on each of two DDP ranks (run once for this file's tests)."""
    return run_ranks(train, tmp_path_factory.mktemp("pcgrad_ddp"), timeout_s=TIMEOUT_S)


def test_pcgrad_ddp_equals_one_process_on_the_whole_batch(two_ranks):
    single = train(rank=0, world_size=1)
    for step in range(STEPS):
        for name, expected in single["grads"][step].items():
            if expected is None:
                assert name == "unused"
                assert all(r["grads"][step][name] is None for r in two_ranks)
                continue
            for r in two_ranks:
                torch.testing.assert_close(r["grads"][step][name], expected, msg=f"step {step} {name}")
            assert torch.equal(two_ranks[0]["grads"][step][name], two_ranks[1]["grads"][step][name])
    # The check has teeth: projecting each rank's own task gradients, then averaging (as
    # before), gives another result, since the tasks conflict.
    halves = [train(rank=0, world_size=1, part=(i, 2))["grads"][0] for i in range(2)]
    local = (halves[0]["trunk.0.weight"] + halves[1]["trunk.0.weight"]) / 2
    assert not torch.allclose(local, single["grads"][0]["trunk.0.weight"], rtol=1e-3, atol=1e-6)


def test_pcgrad_ddp_all_reduces_once_per_step_and_never_in_backward(two_ranks):
    for r in two_ranks:
        assert r["in_backward"] == [0] * STEPS
        assert r["in_sync"] == [1] * STEPS
        assert r["ddp_buckets"] == 0  # DDP itself never reduced (every micro-batch under no_sync)
