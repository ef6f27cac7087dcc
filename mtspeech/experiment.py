"""The experiment config and how a model is built from it.

An experiment YAML names its data, features, encoder (`kind` + fields), tasks (a mapping
name → `kind` + fields, kinds looked up in `mtspeech.tasks.TASKS`; the first task whose role
is a transcript is the main ASR task unless `main_task` says otherwise), loss weighting, optimizer and training schedule. The
resolved plain dict travels inside every checkpoint so a model rebuilds from its file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mtspeech.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from mtspeech.data.augment import AugmentConfig
from mtspeech.data.features import FeatureConfig, SpecAugmentConfig


@dataclass(frozen=True)
class DataConfig:
    """Manifests and batching."""

    train: str | tuple[str, ...]  # a manifest, or a list of them (concatenated)
    dev: str | None = None
    max_batch_seconds: float = 60.0
    num_workers: int = 2
    speed_perturb: tuple[float, ...] | None = (0.9, 1.0, 1.1)
    perturbed_speaker: bool = False  # keep speaker labels on speed-perturbed copies
    augment: AugmentConfig | None = None  # noise / reverberation / gain in training (off when absent)
    max_utterance_seconds: float | None = 30.0
    cmvn_utterances: int = 300
    sorted_epochs: int = 0  # SortaGrad: shortest batches first in the first N epochs (data/sampler.py)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to `min_lr_ratio`."""

    lr: float = 2e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 500
    min_lr_ratio: float = 0.05
    clip_grad_norm: float = 5.0
    accum_steps: int = 1


AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train."""

    epochs: int = 30
    max_steps: int | None = None
    # Stop once the main task's dev `best_metric` has not improved on its earlier best for this
    # many epochs (None: train all `epochs`). `epochs` stays the cap the LR schedule spans.
    patience: int | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA) | off | bf16 | fp16
    log_every_steps: int = 10
    checkpoint_every_steps: int | None = None
    average_best: int = 3
    best_metric: str = "cer"  # a dev metric of the main task, lower is better
    stream_eval_chunk_frames: int | None = None
    threads: int | None = None
    relatedness_every: int = 0  # measure task relatedness every N steps (0: off; mtspeech/relatedness.py)
    relatedness_lookahead_lr: float = 0.01  # SGD step of the lookahead affinity (linear regime: docs/ablation.md)

    def __post_init__(self) -> None:
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"train.patience={self.patience}: expected an epoch count >= 1, or null (off)")
        if self.relatedness_every < 0 or self.relatedness_lookahead_lr <= 0:
            raise ValueError(f"train.relatedness_every={self.relatedness_every} must be >= 0 (0: off) and "
                             f"train.relatedness_lookahead_lr={self.relatedness_lookahead_lr} > 0")
        if self.amp not in AMP_MODES:
            raise ValueError(f"train.amp={self.amp!r}: expected one of {AMP_MODES} (fp16 trains with a "
                             "GradScaler; bf16 needs none)")


@dataclass(frozen=True)
class Experiment:
    """The whole resolved experiment. `encoder`/`tasks` hold typed configs of their kinds."""

    exp_dir: str
    data: DataConfig
    encoder: Any
    tasks: Mapping[str, Any]
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaugment: SpecAugmentConfig | None = field(default_factory=SpecAugmentConfig)
    weighting: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    main_task: str | None = None

    @property
    def asr_task(self) -> str:
        """The main task: `main_task`, else the first task whose role is a transcript."""
        from mtspeech.tasks import Role

        if self.main_task is not None:
            return self.main_task
        for name, cfg in self.tasks.items():
            if cfg.role is Role.TRANSCRIPT:
                return name
        raise ConfigError("no main task: add a transcript task (`kind: ctc` with `label: text`) or set `main_task`")


# `train.keep_last` never did anything (last.pt is the one resumable checkpoint, the N best
# epochs are `average_best`); checkpoints written before its removal still hold it.
_RETIRED_TRAIN_KEYS = ("keep_last",)


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """YAML file (+ `base:` chain) + dotted overrides → validated Experiment."""
    data = apply_overrides(load_yaml(path), list(overrides))
    return experiment_from_dict(data)


def experiment_from_dict(data: Mapping) -> Experiment:
    """Plain dict (as stored in checkpoints) → Experiment, with typed encoder/task configs."""
    from mtspeech.encoders import ENCODERS
    from mtspeech.tasks import task_config
    from mtspeech.weighting import WeightingConfig

    data = dict(data)
    if isinstance(data.get("train"), Mapping):  # retired keys that older checkpoints still carry
        data["train"] = {k: v for k, v in data["train"].items() if k not in _RETIRED_TRAIN_KEYS}
    for key in ("exp_dir", "data", "encoder", "tasks"):
        if key not in data:
            raise ConfigError(f"missing config key {key!r}")
    encoder = dict(data.pop("encoder"))
    kind = encoder.pop("kind", None)
    if kind not in ENCODERS:
        raise ConfigError(f"encoder.kind: {kind!r} is not one of {sorted(ENCODERS)}")
    encoder_cfg = from_dict(ENCODERS[kind].Config, encoder, "encoder")

    tasks_raw = data.pop("tasks")
    if not isinstance(tasks_raw, Mapping) or not tasks_raw:
        raise ConfigError("tasks: expected a non-empty mapping name → {kind: ..., ...}")
    tasks = {}
    for name, raw in tasks_raw.items():
        raw = dict(raw or {})
        raw.setdefault("name", name)
        tasks[name] = task_config(raw, f"tasks.{name}")

    weighting = from_dict(WeightingConfig, data.pop("weighting", {}) or {}, "weighting")
    partial = from_dict(_ExperimentRest, data)
    exp = Experiment(encoder=_Tagged.wrap(kind, encoder_cfg), tasks=tasks, weighting=weighting,
                     **{f.name: getattr(partial, f.name) for f in dataclasses.fields(partial)})
    exp.asr_task  # noqa: B018 — validate now, not mid-training
    towers = getattr(encoder_cfg, "towers", None)
    if towers is not None:
        for key, named in (("tasks", towers.tasks), ("followers", [*towers.followers, *towers.followers.values()])):
            unknown = sorted({t for t in named if t not in tasks})
            if unknown:
                raise ConfigError(f"encoder.towers.{key}: {unknown} are not configured tasks ({sorted(tasks)})")
    if exp.train.best_metric and not exp.data.dev:
        pass  # without dev data, "best" falls back to the training loss (see train.py)
    return exp


def experiment_to_dict(exp: Experiment) -> dict:
    """Experiment → plain dict that `experiment_from_dict` reads back."""
    out = to_dict(exp)
    out["encoder"] = {"kind": exp.encoder.kind, **to_dict(exp.encoder.cfg)}
    for key in ("towers", "branching"):  # unset, the dict of configs that predate them:
        if out["encoder"].get(key, 0) is None:  # an interrupted ablation grid still resumes (ablate.py)
            del out["encoder"][key]
    if not (out["encoder"].get("towers") or {}).get("followers", True):
        del out["encoder"]["towers"]["followers"]  # likewise for towers written before followers
    return out


@dataclass(frozen=True)
class _ExperimentRest:
    exp_dir: str
    data: DataConfig
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaugment: SpecAugmentConfig | None = field(default_factory=SpecAugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    main_task: str | None = None


@dataclass(frozen=True)
class _Tagged:
    """An encoder config together with the registry name that built it."""

    kind: str
    cfg: Any

    @staticmethod
    def wrap(kind: str, cfg: Any) -> "_Tagged":
        return _Tagged(kind, cfg)


def fit_labels(exp: Experiment, train_utts: list) -> dict:
    """Every task's label space from the training manifest (JSON-able, saved in checkpoints)."""
    from mtspeech.tasks import fit_task_labels

    exp_dir = Path(exp.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    return {name: fit_task_labels(cfg, train_utts, exp_dir, exp.data) for name, cfg in exp.tasks.items()}


def build_model(exp: Experiment, labels: dict):
    """Experiment + label spaces → MultiTaskModel (CMVN statistics still at identity)."""
    from mtspeech.data.features import Fbank, GlobalCMVN, SpecAugment
    from mtspeech.encoders import ENCODERS
    from mtspeech.model import MultiTaskModel
    from mtspeech.tasks import build_task
    from mtspeech.tasks.layer_mix import LEARNED, attach_layer_mix

    encoder = ENCODERS[exp.encoder.kind](exp.encoder.cfg)
    tasks = {name: build_task(cfg, encoder.dim, labels[name]) for name, cfg in exp.tasks.items()}
    towers = getattr(encoder, "towers", None)
    for name, task in tasks.items():
        tower_layers = towers.depth if towers is not None and towers.cfg.tower_of(name) else 0
        # checks the index (a tower task must read its tower); `learned` gets its mix
        attach_layer_mix(task, encoder.num_layers, f"tasks.{name}.layer", tower_layers)
        if tower_layers and not towers.cfg.cross_stitch and task.layer not in (LEARNED, -1, encoder.num_layers - 1):
            raise ConfigError(f"tasks.{name}.layer: {task.layer} is below the top of {name}'s tower, whose blocks "
                              "above would get no gradient without cross-stitch (and stop DDP): read the top "
                              "(-1), use fewer encoder.towers.layers, or set encoder.towers.cross_stitch")
        attach = getattr(task, "attach", None)  # optional (Task protocol): CTC conditions the encoder
        if attach is not None:
            attach(encoder)
    specaug = SpecAugment(exp.specaugment) if exp.specaugment is not None else None
    return MultiTaskModel(Fbank(exp.features), GlobalCMVN(exp.features.n_mels), encoder, tasks, exp.asr_task, specaug)
