"""The ablation grid: variant resolution, resuming an interrupted grid, the report and its plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtspeech.ablation import Run, build_report, load_grid, nest, plan_runs, run_config, run_grid
from mtspeech.config import ConfigError
from tiny_experiment import tiny_experiment

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(manifests: dict) -> dict:
    """All four tasks on a 2-layer, 32-dim model; a couple of seconds per run."""
    return tiny_experiment(manifests, data={"max_batch_seconds": 8.0, "cmvn_utterances": 10, "speed_perturb": None},
                           optim={"warmup_steps": 2}, train={"epochs": 5, "average_best": 1})


def tiny_grid(manifests: dict) -> dict:
    return {
        "recipe": tiny_recipe(manifests),
        "seeds": [0, 1],
        "baseline": "asr_only",
        "test": {"test": str(manifests["test"]), "test-unseen": str(manifests["test-unseen"])},
        "shared": {"train.epochs": 2},
        "evaluate": {"decoder": "greedy"},
        "variants": {
            "asr_only": {"tasks": {"phones": None, "speaker": None, "vad": None}},
            "+speaker_adv": {"tasks": {"phones": None, "vad": None}, "tasks.speaker.adversarial": True},
        },
    }


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_variants_merge_dotted_and_nested_overrides_and_null_removes_tasks(prepared_manifests, tmp_path):
    assert nest({"a.b": 1, "a": {"c.d": 2}, "x": None}) == {"a": {"b": 1, "c": {"d": 2}}, "x": None}
    grid = load_grid(tiny_grid(prepared_manifests))
    base = run_config(grid, "asr_only", 1, tmp_path / "r")
    assert list(base["tasks"]) == ["asr"]
    assert base["train"]["seed"] == 1 and base["train"]["epochs"] == 2 and base["exp_dir"] == str(tmp_path / "r")
    adv = run_config(grid, "+speaker_adv", 0, tmp_path / "r")
    assert set(adv["tasks"]) == {"asr", "speaker"} and adv["tasks"]["speaker"]["adversarial"] is True
    with pytest.raises(ConfigError, match="nope"):
        load_grid(tiny_grid(prepared_manifests), variants=["nope"])
    bad = tiny_grid(prepared_manifests)
    bad["variants"]["typo"] = {"tasks.asr.vocab_sise": 3}
    with pytest.raises(ConfigError, match="typo"):
        plan_runs(load_grid(bad), tmp_path / "out")
    # a run planned with one config refuses to continue under another
    plan_runs(grid, tmp_path / "out2")
    changed = tiny_grid(prepared_manifests)
    changed["shared"]["train.epochs"] = 3
    with pytest.raises(ConfigError, match="train.epochs"):
        plan_runs(load_grid(changed), tmp_path / "out2")
    # a run planned before a setting existed (stored without it) continues: it has the default
    spec_path = plan_runs(grid, tmp_path / "out2")[0].dir / "run.json"
    spec = json.loads(spec_path.read_text())
    del spec["config"]["train"]["patience"]
    spec_path.write_text(json.dumps(spec))
    plan_runs(grid, tmp_path / "out2")
    # a grid folder that moved keeps its runs, re-pointed to where they now lie
    (tmp_path / "out2").rename(tmp_path / "moved")
    moved = plan_runs(grid, tmp_path / "moved")
    assert yaml.safe_load((moved[0].dir / "config.yaml").read_text())["exp_dir"] == str(moved[0].dir)


@pytest.mark.parametrize("name", ["ablation", "grid_hierarchy", "grid_sharing", "grid_augment", "grid_weighting",
                                  "grid_controls", "grid_telephone"])
def test_committed_grids_resolve_every_variant(tmp_path, name):
    grid = load_grid(REPO / "recipes" / "synthetic" / f"{name}.yaml")
    assert len(grid.variants) >= 4 and len(grid.seeds) >= 2
    assert grid.baseline in grid.variants or grid.baseline in {s.name for s in grid.searches}
    runs = plan_runs(grid, tmp_path / "demo")  # builds and validates every run's experiment
    assert len(runs) == len(grid.variants) * len(grid.seeds)
    tasks = {r.variant: set(json.loads((r.dir / "run.json").read_text())["config"]["tasks"]) for r in runs}
    if name in ("ablation", "grid_hierarchy", "grid_sharing"):
        assert len(tasks[grid.baseline]) == 1  # the baseline is ASR alone


def _fake_run(root: Path, variant: str, seed: int, errors: list[int]) -> Run:
    run = Run(variant, seed, root / variant / f"seed{seed}")
    path = run.dir / "eval" / "test" / "hypotheses.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({"id": f"u{i}", "asr": {"errors": e, "ref_words": 10, "char_errors": e,
                                                                "ref_chars": 50}}) + "\n"
                            for i, e in enumerate(errors)))
    return run


@pytest.mark.parametrize("shift", [-3, 3])
def test_bootstrap_reports_either_sign(tmp_path, shift):
    """Nothing assumes auxiliary tasks help: a worse variant comes out worse, a better one better."""
    from mtspeech.ablation import paired_seed_bootstrap

    base = [5, 4, 6, 5, 7, 4, 5, 6, 5, 4] * 3
    pairs = [(_fake_run(tmp_path, "base", k, base), _fake_run(tmp_path, "v", k, [e + shift for e in base]))
             for k in (0, 1)]
    res = paired_seed_bootstrap(pairs, "test", "asr", "wer")
    assert res["delta"] == pytest.approx(shift / 10)
    assert res["p_value"] < 0.05 and (res["ci_high"] < 0 if shift < 0 else res["ci_low"] > 0)
    assert res["utterances"] == len(base) and res["seeds_paired"] == [0, 1]


class Crash(Exception):
    pass


@pytest.mark.slow
def test_interrupted_grid_resumes_without_retraining_and_reports(prepared_manifests, tmp_path, monkeypatch):
    from mtspeech.train import Trainer

    out = tmp_path / "grid"
    spec = tiny_grid(prepared_manifests)

    # 1) only the baseline, and its seed-1 run dies after epoch 1 of 2 (last.pt written, no final.pt)
    original = Trainer._keep_best

    def dying(self, results):
        original(self, results)
        if self.exp_dir.name == "seed1" and self.epoch == 1:
            raise Crash("killed")

    monkeypatch.setattr(Trainer, "_keep_best", dying)
    first = run_grid(load_grid(spec, variants=["asr_only"], final=True), out, jobs=1)
    monkeypatch.setattr(Trainer, "_keep_best", original)
    assert list(first["failed"]) == ["asr_only/seed1"]
    done = Run("asr_only", 0, out / "runs" / "asr_only" / "seed0")
    half = Run("asr_only", 1, out / "runs" / "asr_only" / "seed1")
    assert done.done(spec["test"]) and half.state(spec["test"]) == "resume"
    mtime = (done.dir / "final.pt").stat().st_mtime_ns
    def train_steps(run):  # training records only, not the per-epoch dev records
        rows = [json.loads(line) for line in (run.dir / "train_log.jsonl").read_text().splitlines()]
        return [r["step"] for r in rows if "lr" in r]

    half_steps = len(train_steps(half))

    # 2) the whole grid, two worker subprocesses: the finished run is skipped, the half one resumed
    report = run_grid(load_grid(spec, final=True), out, jobs=2)
    assert not report["failed"]
    assert (done.dir / "final.pt").stat().st_mtime_ns == mtime
    actions = {(e["run"], e["event"]) for e in events(out)}
    assert ("asr_only/seed0", "skip") in actions and ("asr_only/seed0", "train") in actions
    assert ("asr_only/seed1", "resume") in actions
    assert [e["event"] for e in events(out) if e["run"] == "asr_only/seed0"].count("train") == 1
    steps = train_steps(half)
    assert len(steps) == len(set(steps)) > half_steps  # resumed after epoch 1, nothing redone
    assert steps == sorted(steps)

    # 3) a third call has nothing left to do
    run_grid(load_grid(spec, final=True), out, jobs=1)
    last = events(out)[-4:]
    assert all(e["event"] == "skip" for e in last)

    # the report: a table per split, bootstrap against the baseline, plots whose sidecars hold the table
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs_finished"]) == 4
    for split in ("test", "test-unseen"):
        sec = results["splits"][split]
        wer = sec["table"]["asr_only"]["asr/wer"]
        assert wer["n"] == 2 and len(wer["values"]) == 2
        assert wer["ci_low"] <= wer["mean"] <= wer["ci_high"]
        for metric in ("wer", "cer"):
            c = sec["comparisons"]["+speaker_adv"][f"asr/{metric}"]
            assert list(c["per_seed"]) == ["0", "1"] and c["level"] == "seeds+utterances"
            assert c["delta"] == pytest.approx(c["variant"] - c["baseline"])
            assert c["baseline"] == pytest.approx(sec["table"]["asr_only"][f"asr/{metric}"]["mean"])
            assert c["variant"] == pytest.approx(sec["table"]["+speaker_adv"][f"asr/{metric}"]["mean"])
            assert c["verdict"] == "no verdict (2 seeds < 3)" and c["p_adjusted"] is None
            boot = c["utterance_only"]  # the seeds-fixed view, kept beside it
            assert 0.0 <= boot["p_value"] <= 1.0 and boot["seeds_paired"] == [0, 1]
            # the pooled rate is the mean over seeds of the per-seed rates (same references per seed)
            assert boot["delta"] == pytest.approx(c["delta"])
        sidecar = json.loads((out / "plots" / f"{split}_asr.json").read_text())
        for variant, row in sec["table"].items():
            for metric in ("asr/wer", "asr/cer"):
                assert sidecar["metrics"][metric][variant]["mean"] == pytest.approx(row[metric]["mean"])
                assert sidecar["metrics"][metric][variant]["values"] == row[metric]["values"]
        # test-unseen has speaker metrics only when some unseen speaker has two utterances (EER)
        if split == "test" or any(k.startswith("speaker/") for k in sec["table"]["+speaker_adv"]):
            speaker_plot = json.loads((out / "plots" / f"{split}_speaker.json").read_text())
            assert speaker_plot["variants"] == ["+speaker_adv"]  # only variants that have the task
        assert (out / "plots" / f"{split}_asr.png").stat().st_size > 0
    curves = json.loads((out / "plots" / "train_asr_loss.json").read_text())
    assert set(next(iter(curves["panels"].values()))) == {"asr_only", "+speaker_adv"}
    md = (out / "report.md").read_text()
    assert "+speaker_adv" in md and "no verdict (2 seeds < 3)" in md and "plots/test_asr.png" in md
    assert results["family"]["size"] == 0  # two seeds: nothing enters the family

    # rebuilding the report from disk alone gives the same numbers
    again = build_report(load_grid(spec, final=True), out)
    assert again["splits"]["test"]["table"] == results["splits"]["test"]["table"]


def test_slurm_options_become_submitit_parameters(prepared_manifests, tmp_path, monkeypatch, capsys):
    from mtspeech.ablation.cli import add_arguments, main
    from mtspeech.ablation.slurm import SlurmOptions, parse_slurm_args

    extra = parse_slurm_args(["account=proj", "constraint=a100|h100"])
    params = SlurmOptions(partition="gpu", gpus_per_node=1, cpus_per_task=8, time_min=240,
                          extra=extra).executor_parameters()
    assert params["slurm_partition"] == "gpu" and params["timeout_min"] == 240
    assert params["gpus_per_node"] == 1 and params["cpus_per_task"] == 8
    assert params["slurm_additional_parameters"] == {"account": "proj", "constraint": "a100|h100"}
    assert "slurm_partition" not in SlurmOptions().executor_parameters()
    with pytest.raises(ConfigError, match="--slurm-arg 'account'"):
        parse_slurm_args(["account"])

    import argparse

    import yaml

    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(tiny_grid(prepared_manifests)))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--grid", str(grid_file), "--out", str(tmp_path / "out"), "--seeds", "0"]
    # --print-commands is untouched by the launcher options
    assert main(parser.parse_args(base + ["--print-commands", "--launcher", "slurm"])) == 0
    assert capsys.readouterr().out.count("-m mtspeech.ablation --run") == 2
    # no SLURM here: a clear error, not a traceback from deep inside submitit
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(parser.parse_args(base + ["--launcher", "slurm", "--slurm-partition", "gpu"])) == 2


@pytest.mark.slow
def test_slurm_launcher_reports_like_the_local_one(prepared_manifests, tmp_path):
    """submitit's local executor stands in for SLURM: one job per unfinished run, a failed
    job reported with its log, finished runs skipped on the next call, the local report."""
    from mtspeech.ablation.slurm import SlurmOptions, run_grid_submitit

    out = tmp_path / "grid"
    grid = load_grid(tiny_grid(prepared_manifests), seeds=[0])
    options = SlurmOptions(partition="ignored-here", time_min=5, extra=(("account", "x"),), poll_s=0.2)
    broken = Run("+speaker_adv", 0, out / "runs" / "+speaker_adv" / "seed0")
    broken.dir.mkdir(parents=True)
    (broken.dir / "final.pt").write_bytes(b"not a checkpoint")  # its job fails fast, in evaluation

    first = run_grid_submitit(grid, out, options, threads=1, cluster="local")
    assert first["runs_finished"] == ["asr_only/seed0"] and list(first["failed"]) == ["+speaker_adv/seed0"]
    log_path = Path(first["failed"]["+speaker_adv/seed0"].rsplit("log: ", 1)[1])
    assert log_path.is_file() and "Traceback" in log_path.read_text()
    assert str(log_path) in (out / "report.md").read_text()
    assert first["splits"]["dev"]["table"]["asr_only"]["asr/wer"]["n"] == 1  # dev only: no --final

    (broken.dir / "final.pt").unlink()
    second = run_grid_submitit(grid, out, options, threads=1, cluster="local")
    assert not second["failed"] and len(second["runs_finished"]) == 2
    done = [(e["event"], e.get("job_id") is not None) for e in events(out) if e["run"] == "asr_only/seed0"]
    assert done == [("train", True), ("finished", True), ("skip", False)]

    # the local launcher, with nothing left to run, writes the very same report
    slurm_md = (out / "report.md").read_text()
    assert run_grid(grid, out, jobs=1) == second
    assert (out / "report.md").read_text() == slurm_md
