"""The trainer: joint training runs, missing labels train, exact resume, DDP on CPU."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mtspeech.checkpoint import load_model, load_state
from mtspeech.data.augment import AugmentConfig
from mtspeech.experiment import experiment_from_dict
from mtspeech.train import Trainer, train
from tiny_experiment import tiny_experiment


def tiny_config(manifests: dict, exp_dir: Path, **train_overrides) -> dict:
    """A 2-layer, 32-dim model with all four tasks: seconds per epoch on the tiny corpus."""
    return tiny_experiment(manifests, exp_dir, train={"epochs": 2, **train_overrides})


def read_log(exp_dir: Path) -> dict[int, dict]:
    """step → last logged training record (a resumed run re-logs the steps after its
    checkpoint); the per-epoch dev records are left out."""
    records = {}
    for line in (exp_dir / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "lr" in rec:
            records[rec["step"]] = rec
    return records


@pytest.mark.slow
def test_joint_training_writes_checkpoints_and_reduces_asr_loss(prepared_manifests, tmp_path):
    exp = experiment_from_dict(tiny_config(prepared_manifests, tmp_path / "exp", epochs=4))
    results = train(exp)
    for metric in ("asr/cer", "phones/per", "speaker/accuracy", "vad/f1"):  # every task's dev metric, a number
        value = results.get(metric)
        assert isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, (metric, results)
    assert results["speaker/accuracy"] <= 1 and results["vad/f1"] <= 1, results
    log = read_log(tmp_path / "exp")
    steps = sorted(log)
    first, last = log[steps[0]]["loss/asr"], log[steps[-1]]["loss/asr"]
    assert last < first, f"ASR loss did not fall: {first} -> {last}"
    for name in ("last.pt", "final.pt", "labels.json", "best.json"):
        assert (tmp_path / "exp" / name).exists(), name
    model, exp2, labels = load_model(tmp_path / "exp" / "final.pt")
    assert set(model.tasks) == {"asr", "phones", "speaker", "vad"}
    assert load_state(tmp_path / "exp" / "final.pt")["averaged"]


def test_a_list_of_training_manifests_trains_on_all_of_them(prepared_manifests, tmp_path):
    """data.train: [a, b] reads both (train-clean-100 + train-clean-360, or train + train-voices):
    every utterance, and every speaker gets a class."""
    from mtspeech.data.manifest import read_manifest, write_manifest

    utts = read_manifest(prepared_manifests["train"])
    by_speaker = sorted({u.speaker for u in utts})
    second = set(by_speaker[::2])
    write_manifest(tmp_path / "a.jsonl", [u for u in utts if u.speaker not in second])
    write_manifest(tmp_path / "b.jsonl", [u for u in utts if u.speaker in second])
    cfg = tiny_config(prepared_manifests, tmp_path / "exp", epochs=1, max_steps=1)
    cfg["data"]["train"] = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    trainer = Trainer(experiment_from_dict(cfg))
    assert sorted(u.id for u in trainer.train_utts) == sorted(u.id for u in utts)
    assert trainer.labels["speaker"]["speakers"] == by_speaker


def test_task_with_missing_labels_trains(prepared_manifests, tmp_path):
    """Utterances without phones/speech labels stay in the batch; only that task masks them."""
    from mtspeech.data.manifest import read_manifest, write_manifest
    import dataclasses

    utts = read_manifest(prepared_manifests["train"])
    holed = [dataclasses.replace(u, phones=None, speech=None) if i % 2 else u for i, u in enumerate(utts)]
    write_manifest(tmp_path / "train.jsonl", holed)
    manifests = {"train": tmp_path / "train.jsonl", "dev": prepared_manifests["dev"]}
    exp = experiment_from_dict(tiny_config(manifests, tmp_path / "exp", epochs=1, max_steps=3))
    trainer = Trainer(exp)
    trainer.fit()
    log = read_log(tmp_path / "exp")
    assert all(torch.isfinite(torch.tensor(r["loss/phones"])) for r in log.values() if "loss/phones" in r)
    assert trainer.step == 3


def test_task_absent_from_a_batch_still_gives_its_head_a_zero_gradient(prepared_manifests, tmp_path, monkeypatch):
    """DDP needs a gradient for every parameter from every rank: a batch without any speaker
    label leaves the speaker loss out, yet the speaker head gets a (zero) gradient."""
    from mtspeech.data.manifest import read_manifest, write_manifest
    import dataclasses

    utts = read_manifest(prepared_manifests["train"])
    one_speaker = [u if i == 0 else dataclasses.replace(u, speaker=None) for i, u in enumerate(utts)]
    write_manifest(tmp_path / "train.jsonl", one_speaker)
    manifests = {"train": tmp_path / "train.jsonl", "dev": prepared_manifests["dev"]}
    exp = experiment_from_dict(tiny_config(manifests, tmp_path / "exp", epochs=1, max_steps=4))
    grads = []
    original = Trainer._optimizer_step

    def spy(self):
        head = list(self.model.tasks["speaker"].parameters())
        grads.append([None if p.grad is None else bool(p.grad.any()) for p in head])
        return original(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", spy)
    Trainer(exp).fit()
    assert len(grads) == 4 and all(None not in g for g in grads)
    assert any(not any(g) for g in grads), "some batch should lack every speaker label"
    logged = read_log(tmp_path / "exp")
    assert any("loss/speaker" not in r for r in logged.values())


class Crash(Exception):
    pass


def test_augmentation_starts_at_its_epoch(prepared_manifests, tmp_path):
    cfg = tiny_config(prepared_manifests, tmp_path / "exp")
    cfg["data"]["augment"] = {"prob": 1.0, "start_epoch": 1}
    trainer = Trainer(experiment_from_dict(cfg))
    assert trainer._loader(trainer.train_utts, trainer.sampler, train=True).dataset.augmenter is None
    trainer.epoch = 1
    assert trainer._loader(trainer.train_utts, trainer.sampler, train=True).dataset.augmenter is not None
    assert trainer._loader(trainer.train_utts, trainer.sampler, train=False).dataset.augmenter is None
    with pytest.raises(ValueError, match="start_epoch"):
        AugmentConfig(start_epoch=-1)


@pytest.mark.slow
@pytest.mark.parametrize("accum_steps", [1, 3])
def test_resume_after_kill_gives_the_same_loss_curve(prepared_manifests, tmp_path, monkeypatch, accum_steps):
    """Bit for bit on the CPU, with gradient accumulation and the loader's augmentation too
    (noise, rooms, noise-only padding, new voices, telephone; an epoch's leftover micro-batches once
    leaked into the next epoch, unsaved)."""
    cfg = tiny_config(prepared_manifests, tmp_path / "straight", epochs=2, checkpoint_every_steps=1)
    cfg["data"]["speed_perturb"] = [0.9, 1.0, 1.1]
    cfg["optim"]["accum_steps"] = accum_steps
    if accum_steps > 1:  # and loader augmentation from the killed epoch on: identical across the resume too
        cfg["data"]["augment"] = {"prob": 0.5, "reverb_prob": 0.5, "pad_prob": 0.5, "formant_prob": 0.3,
                                  "telephone_prob": 0.3, "start_epoch": 1}
    train(experiment_from_dict(cfg))
    straight = read_log(tmp_path / "straight")

    cfg["exp_dir"] = str(tmp_path / "resumed")
    kill_at = max(straight) - 2  # mid-epoch of the second epoch
    original = Trainer._log_step

    def crashing(self, losses, bar):
        original(self, losses, bar)
        if self.step == kill_at:
            self.save_last()  # what checkpoint_every_steps did just before the kill
            raise Crash

    monkeypatch.setattr(Trainer, "_log_step", crashing)
    with pytest.raises(Crash):
        train(experiment_from_dict(cfg))
    monkeypatch.setattr(Trainer, "_log_step", original)
    train(experiment_from_dict(cfg))
    resumed = read_log(tmp_path / "resumed")
    assert sorted(resumed) == sorted(straight)
    for step in straight:
        for key in straight[step]:
            if key.startswith("loss/"):
                assert resumed[step][key] == straight[step][key], (step, key)


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_load_in_one(prepared_manifests, tmp_path):
    cfg = tiny_config(prepared_manifests, tmp_path / "ddp", epochs=1)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mtspeech.cli", "train", "--config", str(path)]
    # torchrun's -m runs a module; mtspeech.cli has a __main__ guard.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    model, exp, labels = load_model(tmp_path / "ddp" / "final.pt")
    wav = torch.randn(1, 16000)
    enc = model.encode(wav, torch.tensor([16000]))
    assert torch.isfinite(enc.layers[-1]).all()


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_loses_at_most_one_interval(prepared_manifests, tmp_path):
    """A real process killed (SIGKILL) in the middle of writing a checkpoint: last.pt is still
    the previous one, intact, and the run resumes from it and finishes."""
    import signal
    import time

    cfg = tiny_config(prepared_manifests, tmp_path / "exp", epochs=1, checkpoint_every_steps=1)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    marker, kill_step = tmp_path / "in_write", 3
    code = f"""
import time, pathlib, yaml
import mtspeech.checkpoint as ck
from mtspeech.experiment import experiment_from_dict
from mtspeech.train import train
real_save = ck.torch.save
def torn_save(state, f, *a, **k):
    if isinstance(state, dict) and state.get("step") == {kill_step}:
        f.write(b"PK" + bytes(1000)); f.flush()  # half a checkpoint on disk
        pathlib.Path({str(marker)!r}).write_text("writing")
        time.sleep(300)
    real_save(state, f, *a, **k)
ck.torch.save = torn_save
train(experiment_from_dict(yaml.safe_load(open({str(path)!r}))))
"""
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timeout"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    exp_dir = tmp_path / "exp"
    assert list(exp_dir.glob(".last.pt.*.tmp")), "the torn write should have left its temp file"
    assert load_state(exp_dir / "last.pt")["step"] == kill_step - 1  # one interval lost, no more
    trainer = Trainer(experiment_from_dict(cfg))
    assert trainer.step == kill_step - 1
    assert not list(exp_dir.glob(".last.pt.*.tmp")), "resume clears stale temp files"
    trainer.fit()
    assert (exp_dir / "final.pt").exists() and trainer.step > kill_step


def test_fp16_trains_with_a_grad_scaler_whose_state_is_checkpointed(prepared_manifests, tmp_path):
    exp = experiment_from_dict(tiny_config(prepared_manifests, tmp_path / "exp", epochs=1, max_steps=3,
                                           amp="fp16", device="cpu"))
    trainer = Trainer(exp)
    assert trainer.scaler.is_enabled()
    trainer.fit()
    state = load_state(tmp_path / "exp" / "last.pt")
    assert state["scaler"]["scale"] > 0 and trainer.step >= 1
    losses = [v for r in read_log(tmp_path / "exp").values() for k, v in r.items() if k.startswith("loss/")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_unknown_amp_is_an_error(prepared_manifests, tmp_path):
    with pytest.raises(ValueError, match="train.amp='fp8'"):
        experiment_from_dict(tiny_config(prepared_manifests, tmp_path, amp="fp8"))


def test_uncertainty_log_variances_get_no_weight_decay(prepared_manifests, tmp_path):
    cfg = tiny_config(prepared_manifests, tmp_path / "exp", epochs=1, max_steps=1)
    cfg["weighting"] = {"kind": "uncertainty"}
    trainer = Trainer(experiment_from_dict(cfg))
    log_vars = {id(p) for p in trainer.weighting.parameters()}
    assert log_vars
    for group in trainer.optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & log_vars:
            assert ids == log_vars and group["weight_decay"] == 0.0
        else:
            assert group["weight_decay"] == trainer.exp.optim.weight_decay > 0


def test_patience_stops_when_the_dev_metric_stops_improving_and_a_resume_stays_stopped(
        prepared_manifests, tmp_path, monkeypatch):
    # Dev CER by epoch: improves twice, then flat. With patience 2 the run stops after epoch 4
    # (epochs 3-4 no better than epoch 2's 0.5), well before the cap of 8.
    cer = iter([0.9, 0.5, 0.5, 0.6, 0.1, 0.1, 0.1, 0.1])
    monkeypatch.setattr(Trainer, "evaluate_dev", lambda self: {"asr/cer": next(cer)})
    cfg = tiny_config(prepared_manifests, tmp_path / "exp", epochs=8, patience=2, average_best=0)
    trainer = Trainer(experiment_from_dict(cfg))
    trainer.fit()
    assert trainer.epoch == 4 and [h["asr/cer"] for h in trainer.history] == [0.9, 0.5, 0.5, 0.6]
    again = Trainer(experiment_from_dict(cfg))  # resumes from last.pt: nothing more to train
    assert again.epoch == 4
    again.fit()
    assert again.epoch == 4 and again.step == trainer.step
    rec = json.loads((tmp_path / "exp" / "stopping.json").read_text())
    assert rec["stopped_by"] == "plateau" and rec["epochs"] == 4 and rec["cap"]["epochs"] == 8
    assert [h["asr/cer"] for h in rec["dev_curve"]] == [0.9, 0.5, 0.5, 0.6]


def test_patience_waits_out_the_blank_plateau(prepared_manifests, tmp_path, monkeypatch):
    # CER stuck at 1.0 (CTC's blank plateau) is flat, but no reason to stop: only a metric that
    # has improved once and then stalled is.
    cer = iter([1.0, 1.0, 1.0, 1.0, 0.8, 0.7, 0.7, 0.7, 0.7])
    monkeypatch.setattr(Trainer, "evaluate_dev", lambda self: {"asr/cer": next(cer)})
    cfg = tiny_config(prepared_manifests, tmp_path / "exp", epochs=9, patience=2, average_best=0)
    trainer = Trainer(experiment_from_dict(cfg))
    trainer.fit()
    assert trainer.epoch == 8  # stops after 0.7, 0.7 failed to beat epoch 6's 0.7


def test_a_run_cut_by_its_cap_says_so(prepared_manifests, tmp_path, monkeypatch):
    cer = iter([0.9, 0.8, 0.7])  # still improving when the epochs run out
    monkeypatch.setattr(Trainer, "evaluate_dev", lambda self: {"asr/cer": next(cer)})
    cfg = tiny_config(prepared_manifests, tmp_path / "exp", epochs=3, patience=2, average_best=0)
    Trainer(experiment_from_dict(cfg)).fit()
    rec = json.loads((tmp_path / "exp" / "stopping.json").read_text())
    assert rec["stopped_by"] == "cap" and rec["epochs"] == 3 and rec["metric"] == "dev/asr/cer"
    assert [h["asr/cer"] for h in rec["dev_curve"]] == [0.9, 0.8, 0.7]


def test_patience_must_be_positive(prepared_manifests, tmp_path):
    with pytest.raises(ValueError, match="train.patience=0"):
        experiment_from_dict(tiny_config(prepared_manifests, tmp_path, patience=0))
