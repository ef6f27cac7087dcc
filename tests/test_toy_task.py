"""A task kind defined and registered in this file alone trains, evaluates, streams and exports.

The toy is a frame-level speaker-sex classifier: one logit per encoder frame ("female"), trained
with the utterance's `sex` on every valid frame and scored per utterance on the mean frame
probability. Its role is `Role.NONE`: nothing outside training and evaluation reads it. With no
edit outside this file it must go through `mtspeech train` (a recipe naming its kind, dev scored
by its scorer), `mtspeech evaluate` (its metric in results.json), the streaming recognizer (which
runs with it present; its frame outputs chunk by chunk equal the chunk-masked full forward) and
`mtspeech export onnx` (the export leaves a role-less head out and stays in parity with torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from mtspeech.cli import main as cli
from mtspeech.tasks import TASKS, Role, ScoredBatch, Scores, ScoringOptions, Targets, register_task, zero_loss
from mtspeech.tasks.layer_mix import LayerSpec
from tiny_experiment import tiny_experiment

KIND = "toy-frame-sex"
CHUNK, LEFT = 4, 3


@dataclass(frozen=True)
class FrameSexConfig:
    kind: str = KIND
    name: str = "sex"
    layer: LayerSpec = -1
    weight: float = 0.5

    @property
    def role(self) -> Role:
        return Role.NONE


class FrameSexTask(nn.Module):
    """Linear head → one "female" logit per encoder frame (B,T); BCE over valid frames."""

    Config = FrameSexConfig

    def __init__(self, cfg: FrameSexConfig, dim: int, labels: dict):
        super().__init__()
        self.cfg, self.name, self.layer, self.role = cfg, cfg.name, cfg.layer, cfg.role
        self.head = nn.Linear(dim, 1)

    @classmethod
    def fit_labels(cls, cfg, train_utts, exp_dir, data=None) -> dict:
        return {}

    def collate(self, utts: list) -> Targets:
        return Targets(values=torch.tensor([float(u.sex == "F") for u in utts]),
                       lens=torch.ones(len(utts), dtype=torch.long),
                       present=torch.tensor([u.sex in ("F", "M") for u in utts]))

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        return self.head(h).squeeze(-1)

    def frame_mask(self, logits: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        return torch.arange(logits.shape[1], device=logits.device)[None] < h_lens[:, None]

    def loss(self, logits: torch.Tensor, h_lens: torch.Tensor, targets: Targets) -> torch.Tensor:
        mask = self.frame_mask(logits, h_lens) & targets.present[:, None]
        if not mask.any():
            return zero_loss(logits)
        labels = targets.values[:, None].expand_as(logits)
        return F.binary_cross_entropy_with_logits(logits[mask].float(), labels[mask].float())

    def scorer(self, options: ScoringOptions) -> "FrameSexScorer":
        return FrameSexScorer(self)


class FrameSexScorer:
    """`accuracy`: utterances whose mean frame p(female) falls on the side of their sex."""

    def __init__(self, task: FrameSexTask):
        self.task = task
        self.collected: dict[str, list] = {"correct": []}

    def add(self, batch: ScoredBatch) -> list[dict]:
        mask = self.task.frame_mask(batch.logits, batch.enc.lens).float()
        p = (torch.sigmoid(batch.logits.detach().float()) * mask).sum(1) / mask.sum(1).clamp(min=1)
        records = []
        for u, p_female in zip(batch.utts, p.cpu().tolist()):
            rec = {"p_female": p_female, "ref": u.sex}
            if u.sex in ("F", "M"):
                self.collected["correct"].append((p_female > 0.5) == (u.sex == "F"))
            records.append(rec)
        return records

    def finish(self) -> Scores:
        name, correct = self.task.name, self.collected["correct"]
        if not correct:
            return Scores(not_scored={f"{name}/accuracy": "no utterance names its speaker's sex"})
        return Scores({f"{name}/accuracy": sum(correct) / len(correct)},
                      {f"{name}/accuracy": {"correct": sum(correct), "total": len(correct)}})


@pytest.fixture(scope="module")
def trained(prepared_manifests, tmp_path_factory) -> Path:
    """final.pt of `mtspeech train` on a recipe with an ASR task and the toy task (2 steps)."""
    register_task(KIND)(FrameSexTask)
    try:
        folder = tmp_path_factory.mktemp("toy_task")
        cfg = tiny_experiment(prepared_manifests, folder / "exp", data={"speed_perturb": None}, specaugment=None,
                              train={"epochs": 1, "max_steps": 2, "average_best": 1})
        cfg["tasks"] = {"asr": cfg["tasks"]["asr"], "sex": {"kind": KIND, "layer": 0}}
        recipe = folder / "toy.yaml"
        recipe.write_text(yaml.safe_dump(cfg))
        torch.manual_seed(0)
        assert cli(["train", "--config", str(recipe)]) == 0
        yield folder / "exp" / "final.pt"
    finally:
        del TASKS[KIND]  # other tests see the built-in kinds only


def test_the_toy_task_trains_through_mtspeech_train(trained):
    from mtspeech.checkpoint import load_model

    model, exp, _ = load_model(trained)
    assert exp.tasks["sex"].kind == KIND and isinstance(model.tasks["sex"], FrameSexTask)
    assert exp.asr_task == "asr"  # the first transcript role, not the toy
    log = [json.loads(line) for line in (trained.parent / "train_log.jsonl").read_text().splitlines()]
    assert any("loss/sex" in r for r in log), "the toy's loss was not trained"
    assert any("dev/sex/accuracy" in r for r in log), "the toy's scorer did not score dev"


def test_the_toy_task_is_scored_by_mtspeech_evaluate(trained, prepared_manifests, tmp_path):
    assert cli(["evaluate", str(trained), str(prepared_manifests["test"]), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    correct = results["counts"]["sex/accuracy"]
    assert results["metrics"]["sex/accuracy"] == correct["correct"] / correct["total"] and correct["total"] > 0
    assert "asr/cer" in results["metrics"]
    rows = [json.loads(line) for line in (tmp_path / "hypotheses.jsonl").read_text().splitlines()]
    assert all(0 <= r["sex"]["p_female"] <= 1 for r in rows)


def test_the_recognizer_streams_with_the_toy_task_present(trained, prepared_manifests):
    from mtspeech.data.audio import load_audio
    from mtspeech.data.manifest import read_manifest
    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.encoders.subsampling import chunk_windows
    from mtspeech.streaming import StreamingConfig
    from mtspeech.streaming.encoder import TorchEncoderStep

    rec = load_recognizer(trained, DecodingConfig(decoder="greedy"), "torch",
                          streaming=StreamingConfig(chunk_frames=CHUNK, left_chunks=LEFT))
    assert rec.encoder_step.roles == ("asr",)  # a role-less head does not stream
    wav = load_audio(read_manifest(prepared_manifests["test"])[0].audio)
    rec.transcribe(wav.numpy())  # runs; a 2-step model's words mean nothing

    # The toy's frame outputs chunk by chunk (caches carried) equal the chunk-masked full forward.
    model, toy = rec.model, rec.model.tasks["sex"]
    step = TorchEncoderStep(model, CHUNK, LEFT, heads={"sex": toy})
    with torch.inference_mode():
        feats, lens = model.features(wav[None], torch.tensor([len(wav)]))
        full = model.encoder(feats, lens, chunk_frames=CHUNK, left_chunks=LEFT)
        want = model.task_logits(full)["sex"][0, : int(full.lens[0])]
        cache, got = step.init_cache(1), []
        for start, end in chunk_windows(feats.shape[1], CHUNK):
            out, cache = step(feats[:, start:end], cache, ("sex",))
            got.append(out.logits["sex"][0, : int(out.lens[0])])
    torch.testing.assert_close(torch.cat(got), want, atol=1e-4, rtol=1e-4)


def test_onnx_export_handles_the_toy_task(trained, prepared_manifests, tmp_path):
    from mtspeech.checkpoint import load_model
    from mtspeech.data.audio import load_audio
    from mtspeech.data.manifest import read_manifest
    from mtspeech.export.onnx import ExportInfo
    from mtspeech.export.parity import logit_parity
    from mtspeech.export.runtime import OnnxEncoderStep
    from mtspeech.streaming.encoder import TorchEncoderStep

    assert cli(["export", "onnx", "--model", str(trained), "--out", str(tmp_path),
                "--chunk-frames", str(CHUNK), "--left-chunks", str(LEFT)]) == 0
    assert ExportInfo.load(tmp_path).roles == ("asr",)  # the streaming heads; the toy has no role there
    model, _, _ = load_model(trained)
    model.eval()
    wav = load_audio(read_manifest(prepared_manifests["test"])[0].audio)
    with torch.inference_mode():
        feats, _ = model.features(wav[None], torch.tensor([len(wav)]))
    diff = logit_parity(TorchEncoderStep(model, CHUNK, LEFT), OnnxEncoderStep(tmp_path, checkpoint=trained),
                        [feats[0]])
    assert max(diff.values()) < 1e-4, diff
