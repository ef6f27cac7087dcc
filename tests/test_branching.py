"""Affinity-driven branching (mtspeech/branching.py): the rule on hand-made affinities, a toy
where two tasks conflict splits them and keeps two agreeing tasks together, each tower starts
from its source's optimizer state, the run resumes exactly on either side of the split, the
checkpoint alone rebuilds the branched model, and bad configs are clear errors. (The split
itself, and that the branched encoder streams like full context: tests/encoders/test_towers.py.)"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtspeech.branching import decide_branching, mean_affinity
from mtspeech.config import ConfigError
from mtspeech.experiment import experiment_from_dict
from mtspeech.tasks import TASKS, Role, Scores, Targets, register_task, zero_loss
from mtspeech.tasks.layer_mix import LayerSpec
from tiny_experiment import tiny_experiment

torch.set_num_threads(1)  # tiny models on shared cores
TOL = dict(atol=1e-5, rtol=1e-5)
KIND = "toy-frame-target"


@dataclass(frozen=True)
class FrameTargetConfig:
    kind: str = KIND
    name: str = "up"
    layer: LayerSpec = -1
    weight: float = 1.0
    target: float = 1.0

    @property
    def role(self) -> Role:
        return Role.NONE


class FrameTargetTask(nn.Module):
    """Every valid frame's scalar output pulled to `target` (MSE). Every such task has the same
    small, frozen head, so tasks with one target agree exactly and tasks with opposite targets
    pull the shared layers in opposite directions: a conflict only towers can resolve (a
    trainable head would absorb it: after one step the two heads point opposite ways)."""

    Config = FrameTargetConfig

    def __init__(self, cfg: FrameTargetConfig, dim: int, labels: dict):
        super().__init__()
        self.cfg, self.name, self.layer, self.role = cfg, cfg.name, cfg.layer, cfg.role
        self.head = nn.Linear(dim, 1)
        with torch.no_grad():  # outputs near 0: the two targets' gradients point opposite ways
            self.head.weight.fill_(0.01 / dim ** 0.5)
            self.head.bias.zero_()
        self.head.requires_grad_(False)

    @classmethod
    def fit_labels(cls, cfg, train_utts, exp_dir, data=None) -> dict:
        return {}

    def collate(self, utts: list) -> Targets:
        ones = torch.ones(len(utts), dtype=torch.long)
        return Targets(values=ones.float(), lens=ones, present=ones.bool())

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        """h (B,T,D) → (B,T)."""
        return self.head(h).squeeze(-1)

    def loss(self, logits: torch.Tensor, h_lens: torch.Tensor, targets: Targets) -> torch.Tensor:
        mask = torch.arange(logits.shape[1], device=logits.device)[None] < h_lens[:, None]
        if not mask.any():
            return zero_loss(logits)
        return F.mse_loss(logits[mask].float(), torch.full_like(logits[mask].float(), self.cfg.target))

    def scorer(self, options) -> "NoScorer":
        return NoScorer()


class NoScorer:
    collected: dict = {}

    def add(self, batch) -> list[dict]:
        return [{} for _ in batch.utts]

    def finish(self) -> Scores:
        return Scores()


@pytest.fixture
def toy_kind():
    register_task(KIND)(FrameTargetTask)
    yield KIND
    del TASKS[KIND]  # other tests see the built-in kinds only


def toy_config(manifests, exp_dir, branching: dict | None = None, **train) -> dict:
    """A 3-layer tiny Conformer with `up` and `same` (target +1: they agree) and `down` (-1: conflicts)."""
    branching = {"warmup_steps": 2, "every": 1, "threshold": 0.0} if branching is None else branching
    cfg = tiny_experiment(manifests, exp_dir, data={"speed_perturb": None, "max_batch_seconds": 6.0},
                          specaugment=None, encoder={"layers": 3, "branching": branching},
                          train={"epochs": 1, "max_steps": 4, "average_best": 1, **train})
    cfg["tasks"] = {"up": {"kind": KIND, "target": 1.0}, "same": {"kind": KIND, "target": 1.0},
                    "down": {"kind": KIND, "target": -1.0}}
    cfg["main_task"] = "up"
    return cfg


def test_rule_groups_agreeing_tasks_and_splits_from_the_top_while_groups_disagree():
    tasks = ["asr", "phones", "vad"]
    top = np.array([[1, 0.8, -0.4], [0.8, 1, -0.2], [-0.4, -0.2, 1]])
    mid = np.array([[1, 0.7, -0.1], [0.7, 1, -0.05], [-0.1, -0.05, 1]])
    low = np.array([[1, 0.9, 0.3], [0.9, 1, 0.2], [0.3, 0.2, 1]])
    record = decide_branching({5: top, 4: mid, 3: low}, tasks, threshold=0.0)
    assert record["groups"] == [["asr", "phones"], ["vad"]] and record["split_layers"] == 2
    assert record["towers"] == {"tasks": ["asr", "vad"], "layers": 2, "followers": {"phones": "asr"}}
    assert [b["split"] for b in record["blocks"]] == [True, True, False]
    assert record["blocks"][0]["between_groups"]["asr+phones | vad"] == pytest.approx(-0.3)
    assert "agree here" in record["blocks"][2]["why"]
    # a layer that agrees stops the split below it, even if a lower one disagrees again
    assert decide_branching({5: top, 4: low, 3: mid}, tasks, 0.0)["split_layers"] == 1
    # everyone agreeing, or a threshold below every cosine: one group, no towers
    agree = decide_branching({5: low}, tasks, 0.0)
    assert agree["groups"] == [tasks] and agree["towers"] is None and agree["split_layers"] == 0
    assert decide_branching({5: top}, tasks, -0.5)["towers"] is None


def test_mean_affinity_averages_the_measurements_and_names_a_pair_never_measured():
    key = "relatedness/pair_cos/{}/{}/blocks.2"
    measured = [{key.format("a", "b"): 0.5, key.format("a", "c"): -1.0}, {key.format("a", "b"): 0.1}]
    with pytest.raises(RuntimeError, match=r"no affinity measured for \['b/c'\] on block 2"):
        mean_affinity(measured, ["a", "b", "c"], 2)
    measured.append({key.format("b", "c"): 0.2})
    mean, n = mean_affinity(measured, ["a", "b", "c"], 2)
    assert n == 1 and mean[0, 1] == mean[1, 0] == pytest.approx(0.3) and mean[1, 2] == pytest.approx(0.2)


def test_conflicting_tasks_split_agreeing_ones_stay_together_and_the_checkpoint_rebuilds_it(
        toy_kind, prepared_manifests, tmp_path):
    from mtspeech.checkpoint import load_model, load_state
    from mtspeech.train import Trainer

    trainer = Trainer(experiment_from_dict(toy_config(prepared_manifests, tmp_path / "exp")))
    trainer.fit()
    record = json.loads((tmp_path / "exp" / "branching.json").read_text())
    assert record["groups"] == [["up", "same"], ["down"]] and record["step"] == 2 and record["measurements"] == 2
    top = record["blocks"][0]
    assert top["affinity"]["up/same"] == pytest.approx(1.0) and top["affinity"]["up/down"] < -0.9
    enc = trainer.model.encoder
    assert enc.towers is not None and enc.towers.tasks == ("up", "down") and enc.cfg.towers.followers == {"same": "up"}
    assert record["split_layers"] == len(enc.towers.blocks["up"]) >= 1
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_optimizer for p in enc.towers.parameters())
    log = [json.loads(line) for line in (tmp_path / "exp" / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("branching/split_layers") == record["split_layers"] for r in log)
    # final.pt alone rebuilds the branched model: its config names the decided towers
    state = load_state(tmp_path / "exp" / "final.pt")
    assert state["config"]["encoder"]["towers"]["followers"] == {"same": "up"}
    assert "branching" not in state["config"]["encoder"] and state["branching"]["record"] == record
    model, _, _ = load_model(tmp_path / "exp" / "final.pt")
    assert model.encoder.towers.tasks == ("up", "down")


def test_split_optimizer_starts_each_tower_from_its_sources_adam_state(toy_kind, prepared_manifests, tmp_path):
    from mtspeech.train import Trainer

    trainer = Trainer(experiment_from_dict(toy_config(prepared_manifests, tmp_path / "exp", max_steps=2)))
    trainer.fit()  # the warm-up only: step 2 decides and splits right after its update
    assert trainer.branching.record is not None
    enc, opt = trainer.model.encoder, trainer.optimizer
    depth = len(enc.towers.blocks["up"])
    trunk = len(enc.blocks)
    for j in range(depth):
        up, down = enc.towers.blocks["up"][j].ff1.net[1].weight, enc.towers.blocks["down"][j].ff1.net[1].weight
        assert torch.equal(opt.state[up]["exp_avg"], opt.state[down]["exp_avg"])  # one source, two copies
        assert opt.state[up]["exp_avg"] is not opt.state[down]["exp_avg"] and opt.state[up]["exp_avg"].abs().sum() > 0
    assert trunk + depth == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(trainer.scheduler.get_last_lr()[0])


class Crash(Exception):
    pass


@pytest.mark.parametrize("kill_at", [1, 3])  # killed during the warm-up, or after the split
def test_a_run_resumes_on_either_side_of_the_split_exactly(kill_at, toy_kind, prepared_manifests, tmp_path,
                                                            monkeypatch):
    from mtspeech.checkpoint import CheckpointError
    from mtspeech.train import Trainer

    straight = Trainer(experiment_from_dict(toy_config(prepared_manifests, tmp_path / "straight")))
    straight.fit()
    cfg = toy_config(prepared_manifests, tmp_path / "resumed")
    original = Trainer._log_step

    def crashing(self, losses, bar):
        original(self, losses, bar)
        if self.step == kill_at:
            self.save_last()  # what checkpoint_every_steps would have done just before the kill
            raise Crash

    monkeypatch.setattr(Trainer, "_log_step", crashing)
    with pytest.raises(Crash):
        Trainer(experiment_from_dict(cfg)).fit()
    monkeypatch.setattr(Trainer, "_log_step", original)
    unbranched = {**cfg, "encoder": {k: v for k, v in cfg["encoder"].items() if k != "branching"}}
    with pytest.raises(CheckpointError, match="was trained with encoder.branching and this config says otherwise"):
        Trainer(experiment_from_dict(unbranched))  # its last.pt cannot resume a hard-shared run
    resumed = Trainer(experiment_from_dict(cfg))
    assert resumed.step == kill_at and (resumed.model.encoder.towers is None) == (kill_at < 2)
    resumed.fit()
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    assert set(got) == set(want) and resumed.branching.record == straight.branching.record
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)


@pytest.mark.parametrize("change, message", [
    ({"kind": "gradient"}, r"encoder.branching.kind: 'gradient' is not one of \['affinity'\]"),
    ({"warmup_steps": 0}, "warmup_steps=0 must be >= 1"),
    ({"every": 5, "warmup_steps": 2}, r"every=5 in 1..warmup_steps"),
    ({"threshold": 1.5}, r"threshold=1.5 must be a cosine in \[-1, 1\]"),
    ({"max_layers": 4}, "max_layers=4 exceeds the encoder's 3 layers"),
    ({"lanes": 1}, "unknown config key.*encoder.branching.lanes"),
])
def test_bad_branching_configs_are_clear_errors(change, message, prepared_manifests, tmp_path):
    cfg = tiny_experiment(prepared_manifests, tmp_path, encoder={"layers": 3, "branching": change})
    with pytest.raises((ConfigError, ValueError), match=message):
        experiment_from_dict(cfg)


def test_branching_with_hand_written_towers_or_too_few_top_tasks_is_refused(prepared_manifests, tmp_path):
    from mtspeech.train import Trainer

    cfg = tiny_experiment(prepared_manifests, tmp_path, encoder={
        "layers": 3, "branching": {}, "towers": {"tasks": ["asr", "phones"], "layers": 1}})
    with pytest.raises(ValueError, match="encoder.towers and encoder.branching are exclusive"):
        experiment_from_dict(cfg)
    cfg = tiny_experiment(prepared_manifests, tmp_path / "exp", encoder={"layers": 3, "branching": {}})
    with pytest.raises(ConfigError, match=r"only \['asr'\] read the top layer"):  # the others read layer 0
        Trainer(experiment_from_dict(cfg))


def test_the_branching_grid_plans_runs_that_load():
    """recipes/synthetic/grid_branching.yaml (not yet run) stays ready to run: every variant's
    config loads, and the branching variants put at least two tasks on the top layer."""
    from pathlib import Path

    from mtspeech.ablation.grid import load_grid, run_config

    grid = load_grid(Path(__file__).parents[1] / "recipes" / "synthetic" / "grid_branching.yaml")
    branched = 0
    for variant in grid.variants:
        exp = experiment_from_dict(run_config(grid, variant, grid.seeds[0], Path("unused")))
        if exp.encoder.cfg.branching is not None:
            branched += 1
            assert sum(t.layer == -1 for t in exp.tasks.values()) >= 2, variant
    assert branched == 2
