"""DDP on 2 CPU processes (gloo): no rank ever skips a step alone. Each fault hits rank 1
only, on the batch that closes an accumulation window (the one whose backward all-reduces).
On the trainer before skip decisions were agreed across ranks (d778b6c), all three faults
hang rank 0 in the gradient all-reduce, and the timeout turns the hang into a failure (checked
by running this file against that trainer). A comm hook also records every collective each
rank calls, so a shift that gloo would pair silently fails the test too."""

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


def _assert_collectives_in_step(record: Path) -> None:
    """Both ranks called the same collectives at the same points of the run."""
    calls = {0: [], 1: []}
    for r in _records(record):
        if "collective" in r:
            calls[r["rank"]].append(r["collective"])
    assert calls[0], "no collective was recorded"
    first_diff = next((i for i, (a, b) in enumerate(zip(calls[0], calls[1])) if a != b), None)
    assert calls[0] == calls[1], (
        f"the ranks fell out of step: {len(calls[0])} vs {len(calls[1])} collectives, first "
        f"difference at #{first_diff}: {calls[0][first_diff:first_diff + 2] if first_diff is not None else ''}"
        f" vs {calls[1][first_diff:first_diff + 2] if first_diff is not None else ''}")


def _config(manifests, exp_dir: Path, **train) -> dict:
    return tiny_experiment(manifests, exp_dir, train={"epochs": 2, **train}, optim={"accum_steps": 2})


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["nan", "nolabels", "unreadable"])
# Batch 2 is the one that closes the first accumulation window (accum_steps 2), i.e. the
# batch whose backward all-reduces: a fault on a no-sync micro-batch shifts no collective.
def test_a_fault_on_one_rank_is_skipped_by_all_ranks(prepared_manifests, tmp_path, fault):
    done, record = _run(_config(prepared_manifests, tmp_path / fault), tmp_path, fault, at_batch=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / fault / "final.pt").exists()
    counts = _batches_per_rank_and_epoch(record)
    for epoch in (0, 1):
        assert counts[(0, epoch)] == counts[(1, epoch)] > 0, counts
    _assert_ranks_identical(record)
    _assert_collectives_in_step(record)
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


@pytest.mark.slow
def test_branching_splits_alike_on_every_rank_and_the_ranks_train_on_in_step(prepared_manifests, tmp_path):
    """The warm-up's affinities are averaged over ranks, so both ranks take the same decision,
    split at the same step and re-wrap the split model in DDP; they end bit-identical."""
    cfg = _config(prepared_manifests, tmp_path / "branch")
    cfg["tasks"]["phones"]["layer"] = -1  # asr and phones on the top: the candidates
    cfg["encoder"]["branching"] = {"warmup_steps": 2, "every": 1, "threshold": 1.0}  # any cosine below 1 splits
    done, record = _run(cfg, tmp_path, "none", at_batch=0)
    assert done.returncode == 0, done.stderr[-3000:]
    decision = json.loads((tmp_path / "branch" / "branching.json").read_text())
    assert decision["groups"] == [["asr"], ["phones"]] and decision["split_layers"] == 1  # speaker, vad read 0
    _assert_ranks_identical(record)
