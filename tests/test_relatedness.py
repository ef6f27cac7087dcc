"""Task relatedness: gradient cosines and lookahead affinity by hand, training unchanged, DDP mean."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mtspeech.experiment import experiment_from_dict
from mtspeech.relatedness import average_over_ranks, measure_relatedness, parameter_groups
from mtspeech.train import Trainer
from tiny_experiment import tiny_experiment

A, B, C = 1.5, -0.5, 0.7  # the toy's parameter values


class Toy(nn.Module):
    """Shared a, b; `aux` also reads c (its own, say). Losses with known gradients:
    asr = (a-1)² + 2b² + 1 → (2(a-1), 4b, ·); aux = (ab-1)² + c² → (2(ab-1)b, 2(ab-1)a, 2c)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in (A, B, C))

    def forward(self):
        return {"asr": (self.a - 1) ** 2 + 2 * self.b ** 2 + 1, "aux": (self.a * self.b - 1) ** 2 + self.c ** 2}


def asr_loss(a, b):
    return (a - 1) ** 2 + 2 * b ** 2 + 1


def aux_loss(a, b, c):
    return (a * b - 1) ** 2 + c ** 2


def test_cosine_and_affinity_match_a_hand_computation_on_a_two_parameter_toy():
    toy = Toy()
    shared = {"a": toy.a, "b": toy.b, "c": toy.c}
    lr = 0.1
    out = measure_relatedness(lambda overrides: functional_call(toy, dict(overrides or {}), ()), shared, "asr", lr)

    g_asr = (2 * (A - 1), 4 * B, 0.0)  # asr does not reach c
    g_aux = (2 * (A * B - 1) * B, 2 * (A * B - 1) * A, 2 * C)
    dot = sum(x * y for x, y in zip(g_asr, g_aux))
    cos = dot / math.sqrt(sum(x * x for x in g_asr) * sum(y * y for y in g_aux))
    assert out["relatedness/cos/aux"] == pytest.approx(cos, rel=1e-12)
    # one-parameter groups: the cosine is the sign of the product; c has no ASR gradient, so no cosine
    assert out["relatedness/cos/aux/a"] == pytest.approx(math.copysign(1.0, g_asr[0] * g_aux[0]))
    assert out["relatedness/cos/aux/b"] == pytest.approx(math.copysign(1.0, g_asr[1] * g_aux[1]))
    assert "relatedness/cos/aux/c" not in out and "relatedness/cos/asr" not in out

    # Z_{j→i} = 1 - L_i(θ - lr g_j) / L_i(θ), every ordered pair
    step = {"asr": [A - lr * g_asr[0], B - lr * g_asr[1], C], "aux": [A - lr * g_aux[0], B - lr * g_aux[1], C - lr * g_aux[2]]}
    for j, (a, b, c) in step.items():
        assert out[f"relatedness/affinity/{j}/asr"] == pytest.approx(1 - asr_loss(a, b) / asr_loss(A, B), rel=1e-12)
        assert out[f"relatedness/affinity/{j}/aux"] == pytest.approx(1 - aux_loss(a, b, c) / aux_loss(A, B, C), rel=1e-12)
    # the measurement stepped nothing for real and wrote no .grad
    assert (toy.a.item(), toy.b.item(), toy.c.item()) == (A, B, C)
    assert toy.a.grad is None and toy.b.grad is None


def test_pair_cosines_are_every_task_pairs_cosine_per_group():
    toy = Toy()
    shared = {"a": toy.a, "b": toy.b, "c": toy.c}
    loss_fn = lambda overrides: functional_call(toy, dict(overrides or {}), ())  # noqa: E731
    out = measure_relatedness(loss_fn, shared, "asr", 0.1, groups={"ab": [0, 1], "c": [2]}, pairs=True)
    g_asr, g_aux = (2 * (A - 1), 4 * B), (2 * (A * B - 1) * B, 2 * (A * B - 1) * A)
    cos = sum(x * y for x, y in zip(g_asr, g_aux)) / math.sqrt(sum(x * x for x in g_asr) * sum(y * y for y in g_aux))
    assert out["relatedness/pair_cos/asr/aux/ab"] == pytest.approx(cos, rel=1e-12)
    # per group only, one key per unordered pair; c has no asr gradient, so no cosine
    assert [k for k in out if "pair_cos" in k] == ["relatedness/pair_cos/asr/aux/ab"]
    assert not any("pair_cos" in k for k in measure_relatedness(loss_fn, shared, "asr", 0.1))  # off by default


def test_parameter_groups_follow_the_blocks():
    names = ["encoder.front.conv.0.weight", "encoder.front.proj.bias", "encoder.blocks.0.ff1.w",
             "encoder.blocks.0.attn.q", "encoder.blocks.1.ff1.w", "encoder.norm.weight"]
    assert parameter_groups(names) == {"front": [0, 1], "blocks.0": [2, 3], "blocks.1": [4], "norm": [5]}
    towers = ["encoder.blocks.0.ff1.w", "encoder.towers.blocks.asr.0.ff1.w", "encoder.towers.blocks.asr.1.ff1.w",
              "encoder.towers.blocks.phones.0.ff1.w", "encoder.towers.stitches.0.alpha", "encoder.norm.weight"]
    assert parameter_groups(towers) == {"blocks.0": [0], "towers.asr.0": [1], "towers.asr.1": [2],
                                        "towers.phones.0": [3], "towers.stitch.0": [4], "norm": [5]}


def _train(manifests, exp_dir, every: int):
    cfg = tiny_experiment(manifests, exp_dir, data={"max_batch_seconds": 6.0},
                          train={"epochs": 1, "max_steps": 3, "average_best": 0, "relatedness_every": every})
    cfg["tasks"]["phones"]["layer"] = "learned"
    trainer = Trainer(experiment_from_dict(cfg))
    trainer.fit()
    return trainer


@pytest.mark.slow
def test_measuring_leaves_the_training_trajectory_unchanged(prepared_manifests, tmp_path):
    """SpecAugment and head dropout draw from the RNG and the speaker head counts updates in a
    buffer: after training with a measurement at every step, weights and RNG equal those without."""
    torch.set_num_threads(1)
    plain = _train(prepared_manifests, tmp_path / "plain", every=0)
    rng_plain = torch.get_rng_state()
    probed = _train(prepared_manifests, tmp_path / "probed", every=1)
    assert torch.equal(torch.get_rng_state(), rng_plain)
    a, b = plain.model.state_dict(), probed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [t.too_short for t in plain.model.tasks.values() if hasattr(t, "too_short")] == \
           [t.too_short for t in probed.model.tasks.values() if hasattr(t, "too_short")]

    records = [json.loads(line) for line in (tmp_path / "probed" / "train_log.jsonl").read_text().splitlines()]
    measured = {r["step"]: r for r in records if "relatedness/seconds" in r}
    assert sorted(measured) == [0, 1, 2]  # before each of the three steps
    # A task is measured on the steps whose batch labels it: a speed-perturbed copy has no
    # speaker label, so the speaker's cosine is on some of the three steps only.
    for aux in ("phones", "speaker", "vad"):
        cos = [r[f"relatedness/cos/{aux}"] for r in measured.values() if f"relatedness/cos/{aux}" in r]
        assert cos and all(-1.0 <= c <= 1.0 for c in cos), aux
        assert any(f"relatedness/affinity/{aux}/asr" in r and f"relatedness/affinity/asr/{aux}" in r
                   for r in measured.values()), aux
    assert any(k.startswith("relatedness/cos/phones/blocks.") for k in measured[0])
    # the learned layer weights are logged with the losses, summing to one
    train_recs = [r for r in records if "lr" in r]
    weights = [v for k, v in train_recs[-1].items() if k.startswith("layer_weight/phones/")]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0)
    assert not any("relatedness/" in k for r in (tmp_path / "plain" / "train_log.jsonl").read_text().splitlines()
                   for k in json.loads(r))
    # the trainer drew them
    side = json.loads((tmp_path / "probed" / "learned.json").read_text())
    assert "gradient cosine with the main task" in side["panels"] and "layer weights: phones" in side["panels"]


def _average_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    keys = ["x", "y", "z"]
    values = {"x": float(rank + 1), "y": 10.0} if rank == 0 else {"x": 3.0 * (rank + 1)}
    result = average_over_ranks(values, keys, torch.device("cpu"))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def test_ddp_average_counts_only_the_ranks_that_measured(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "avg.json"
    mp.spawn(_average_worker, args=(2, port, str(out)), nprocs=2)
    # x: (1 + 6) / 2; y only on rank 0; z nowhere
    assert json.loads(out.read_text()) == {"x": 3.5, "y": 10.0}


def _grid(manifests) -> dict:
    recipe = tiny_experiment(manifests, data={"max_batch_seconds": 6.0, "cmvn_utterances": 10, "speed_perturb": None},
                             train={"epochs": 1, "average_best": 0, "relatedness_every": 2})
    return {"recipe": recipe, "seeds": [0, 1], "baseline": "asr_only", "test": {"test": str(manifests["test"])},
            "evaluate": {"decoder": "greedy"},
            "variants": {"asr_only": {"tasks": {"phones": None, "speaker": None, "vad": None}},
                         "+phones": {"tasks": {"speaker": None, "vad": None}}}}


def test_ablation_report_puts_relatedness_beside_the_effect_on_asr(prepared_manifests, tmp_path):
    """Planned runs with hand-written logs and results: the report's numbers are the late-half
    means of each run's measurements, averaged over seeds, beside the variant's Δ CER."""
    from mtspeech.ablation import build_report, load_grid, plan_runs

    grid = load_grid(_grid(prepared_manifests))
    runs = plan_runs(grid, tmp_path)
    cer = {("asr_only", 0): 0.30, ("asr_only", 1): 0.34, ("+phones", 0): 0.25, ("+phones", 1): 0.27}
    cos = {0: [0.9, 0.5, 0.2, 0.4], 1: [0.8, 0.6, 0.1, 0.3]}  # steps 0, 2, 4, 6: the last half is steps 4, 6
    for run in runs:
        results = run.results_path("dev")  # what a grid scores without --final
        results.parent.mkdir(parents=True)
        results.write_text(json.dumps({"asr_task": "asr", "metrics": {"asr/cer": cer[run.variant, run.seed]}}))
        errors = round(100 * cer[run.variant, run.seed])  # per utterance of 100 characters, 20 words
        (results.parent / "hypotheses.jsonl").write_text("".join(json.dumps(
            {"id": f"u{i}", "asr": {"char_errors": errors, "ref_chars": 100, "errors": errors // 5, "ref_words": 20}})
            + "\n" for i in range(10)))
        lines = [{"step": s, "epoch": 0, "lr": 1e-3, "loss/asr": 3.0 - s / 10} for s in range(8)]
        if run.variant == "+phones":
            lines += [{"step": 2 * i, "epoch": 0, "relatedness/cos/phones": c, "relatedness/cos/phones/blocks.0": c / 2,
                       "relatedness/affinity/phones/asr": c / 10, "relatedness/affinity/asr/phones": -c / 10,
                       "relatedness/seconds": 0.1} for i, c in enumerate(cos[run.seed])]
        (run.dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    report = build_report(grid, tmp_path, runs)

    rel = report["relatedness"]["variants"]
    assert set(rel) == {"+phones"}  # the baseline has no auxiliary task, so nothing was measured
    phones = rel["+phones"]["tasks"]["phones"]
    late = [(0.2 + 0.4) / 2, (0.1 + 0.3) / 2]
    assert phones["cos"]["values"] == pytest.approx(late) and phones["cos"]["mean"] == pytest.approx(sum(late) / 2)
    assert phones["cos_by_group"]["blocks.0"]["mean"] == pytest.approx(sum(late) / 4)
    assert phones["affinity_on_asr"]["mean"] == pytest.approx(sum(late) / 20)
    assert phones["affinity_of_asr"]["mean"] == pytest.approx(-sum(late) / 20)
    assert rel["+phones"]["effect_on_asr_cer"]["dev"]["delta"] == pytest.approx((0.25 + 0.27 - 0.30 - 0.34) / 2)
    md = (tmp_path / "report.md").read_text()
    assert "## Task relatedness" in md and "| +phones | phones | +0.250 ± 0.071 (n=2) |" in md
    side = json.loads((tmp_path / "plots" / "relatedness_cos.json").read_text())
    assert side["panels"]["phones"]["+phones"] == [[s, (a + b) / 2] for s, a, b in zip((0, 2, 4, 6), cos[0], cos[1])]


@pytest.mark.slow
def test_tiny_grid_reports_measured_relatedness(prepared_manifests, tmp_path):
    from mtspeech.ablation import load_grid, run_grid

    torch.set_num_threads(1)
    spec = _grid(prepared_manifests)
    spec["shared"] = {"train.max_steps": 4}
    report = run_grid(load_grid(spec, seeds=[0]), tmp_path, jobs=1)
    phones = report["relatedness"]["variants"]["+phones"]["tasks"]["phones"]
    assert -1 <= phones["cos"]["mean"] <= 1 and phones["affinity_on_asr"]["n"] == 1
    assert phones["cos_by_group"] and "## Task relatedness" in (tmp_path / "report.md").read_text()
