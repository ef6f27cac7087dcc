"""DDP on 2 CPU processes (gloo): no rank ever skips a step alone. Each fault hits rank 1
only. Before every skip decision was agreed across ranks, an unreadable batch hung rank 0 in
the gradient all-reduce (the timeout turns a hang into a failure), and a NaN loss or a batch
without labels silently paired unrelated collectives, so the ranks' models diverged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tiny_experiment import tiny_experiment

DRIVER = Path(__file__).parent / "ddp_fault_driver.py"
HANG_TIMEOUT_S = 240


def _run(cfg: dict, tmp: Path, fault: str, at_batch: int, crash_at: int | None = None):
    path = tmp / f"{fault}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    record = tmp / f"{fault}.batches.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(DRIVER), str(path), fault, str(at_batch), str(record)] + ([str(crash_at)] if crash_at else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"fault {fault!r}: the DDP run hung (no result in {HANG_TIMEOUT_S} s)\n{(e.stderr or b'')[-2000:]}")
    return done, record


def _records(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def _batches_per_rank_and_epoch(record: Path) -> Counter:
    return Counter((r["rank"], r["epoch"]) for r in _records(record) if "epoch" in r)


def _assert_ranks_identical(record: Path) -> None:
    """Both ranks finished at the same step with bit-identical parameters."""
    ends = {r["rank"]: r for r in _records(record) if "params_sha" in r}
    assert set(ends) == {0, 1}, ends
    assert ends[0]["final_step"] == ends[1]["final_step"] > 0
    assert ends[0]["params_sha"] == ends[1]["params_sha"], "the ranks' models diverged"


def _config(manifests, exp_dir: Path, **train) -> dict:
    return tiny_experiment(manifests, exp_dir, train={"epochs": 2, **train}, optim={"accum_steps": 2})


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["nan", "nolabels", "unreadable"])
def test_a_fault_on_one_rank_is_skipped_by_all_ranks(prepared_manifests, tmp_path, fault):
    done, record = _run(_config(prepared_manifests, tmp_path / fault), tmp_path, fault, at_batch=3)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / fault / "final.pt").exists()
    counts = _batches_per_rank_and_epoch(record)
    for epoch in (0, 1):
        assert counts[(0, epoch)] == counts[(1, epoch)] > 0, counts
    _assert_ranks_identical(record)
    if fault == "nan":
        assert "non-finite loss" in done.stderr


@pytest.mark.slow
def test_ranks_draw_equal_batches_through_a_resume_mid_epoch(prepared_manifests, tmp_path):
    cfg = _config(prepared_manifests, tmp_path / "resume", checkpoint_every_steps=1)
    crashed, record = _run(cfg, tmp_path, "none", at_batch=0, crash_at=3)
    assert crashed.returncode != 0 and "crash after the checkpoint of step 3" in crashed.stderr
    done, record = _run(cfg, tmp_path, "none", at_batch=0)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = _batches_per_rank_and_epoch(record)  # both runs, appended
    assert counts[(0, 0)] == counts[(1, 0)] and counts[(0, 1)] == counts[(1, 1)] > 0, counts
    _assert_ranks_identical(record)
