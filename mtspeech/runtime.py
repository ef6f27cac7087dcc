"""Where a training process runs: its device, its DDP rank and world size, and its autocast.

Training (`train.py`) and the relatedness probe read these; nothing here knows about tasks.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    """Where this process runs: device, DDP rank and world size."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag ANDed over all ranks (one tiny all-reduce), so every skip decision is
        taken by all ranks together: a rank that skipped alone would leave the others
        waiting in the gradient all-reduce for ever."""
        if self.world_size == 1:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return [bool(v) for v in t.tolist()]


def setup_runtime(device: str) -> Runtime:
    """Initialise DDP when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world_size > 1:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        return Runtime(torch.device(device), rank, world_size)
    return Runtime(torch.device(device))


def resolve_amp(device: torch.device, amp: str) -> str:
    """`auto` → bf16 on CUDA, off elsewhere; other values as given (validated by TrainConfig)."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return amp


def autocast(device: torch.device, amp: str):
    """The forward pass's autocast context for `amp` (off, fp16 or bf16)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)
