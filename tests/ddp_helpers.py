"""Two-rank DDP on the CPU for tests: gloo processes set up as torchrun sets them up (MASTER_ADDR,
MASTER_PORT, RANK, WORLD_SIZE; env:// rendezvous), each saving what `train(rank, world_size)`
returned, under one deadline so a collective that hangs fails the test instead of blocking CI."""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, world_size: int, port: int, out_dir: Path, train: Callable, timeout_s: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    try:
        torch.save(train(rank, world_size), out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(train: Callable[[int, int], dict], out_dir: Path, world_size: int = 2,
              timeout_s: float = 120) -> list[dict]:
    """What `train` (a module-level function) returned on each of `world_size` DDP ranks."""
    import torch._dynamo  # noqa: F401  DDP's constructor imports it (2+ s): once here, not per rank

    # fork: the ranks start with torch already imported (spawn would import it again per rank)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.start_processes(_rank_main, args=(world_size, _free_port(), out_dir, train, timeout_s),
                             nprocs=world_size, join=False, start_method=method)
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):  # raises if a rank failed
            if time.monotonic() > deadline:
                pytest.fail(f"the DDP ranks still run after {timeout_s:g} s (a collective that hangs?)")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
                proc.join()
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world_size)]
