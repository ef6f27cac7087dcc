"""`mtspeech meta-train`: a parameter set's starting values meta-learned across training voices.

    mtspeech meta-train exp/synthetic/all/final.pt --manifest data/synthetic/train-voices.jsonl \\
        --params layer-norms --k 5 --outer-steps 200 --out exp/synthetic/all/meta.pt
    mtspeech adapt exp/synthetic/all/meta.pt --manifest ... --params layer-norms --k 5 --out ...

Reptile (Nichol, Achiam & Schulman 2018), the first-order meta-learner: each voice is a task.
An outer step draws `meta_batch` voices and k of each voice's utterances, adapts the set from
the current start φ with the very inner loop `mtspeech adapt` runs (`fine_tune`), and moves φ
toward the adapted values: φ ← φ + ε · mean(φ'_voice − φ), ε annealed linearly to zero. No
second derivatives: the set is small, but the encoder is not, and backpropagating through the
inner steps would hold every step's activations.

The output is the base checkpoint, weights unchanged, with the learned start stored under
`adaptation_init` (set, tensors, settings, progress): `evaluate` on it is still the base model,
and `adapt` on it starts from φ when asked for the same set. Written every `save_every` outer
steps; a run interrupted and started again with the same settings resumes exactly, because
which voices and utterances an outer step draws is a function of (seed, step) alone.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mtspeech.adaptation import inputs
from mtspeech.adaptation.command import DEFAULT_LR, INIT_KEY, add_set_arguments, load_base, set_config
from mtspeech.adaptation.fine_tune import fine_tune
from mtspeech.adaptation.param_sets import AdaptationError, ParamSet, ParamSetConfig, require_counts
from mtspeech.checkpoint import load_state, save_atomic
from mtspeech.data.manifest import Utterance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReptileConfig:
    """Outer steps, voices per outer step, k utterances and inner Adam steps per voice, the
    inner step size (None: `mtspeech adapt`'s default for the set), the outer step size ε at
    the start (annealed linearly to 0), the seed of every draw, and how often φ is saved."""

    outer_steps: int = 100
    meta_batch: int = 2
    k: int = 5
    inner_steps: int = 5
    inner_lr: float | None = None
    outer_lr: float = 1.0
    seed: int = 0
    save_every: int = 10

    def __post_init__(self) -> None:
        require_counts(self, ("outer_steps", "meta_batch", "k", "inner_steps", "save_every"))
        if not 0 < self.outer_lr <= 1:
            raise AdaptationError(f"--outer-lr must lie in (0, 1], got {self.outer_lr}")


def voices_of(utts: list[Utterance], k: int) -> dict[str, list[Utterance]]:
    """Speaker → transcribed utterances, for the speakers with at least k of them."""
    by_voice: dict[str, list[Utterance]] = {}
    for u in utts:
        if u.speaker is not None and u.text:
            by_voice.setdefault(u.speaker, []).append(u)
    kept = {v: us for v, us in sorted(by_voice.items()) if len(us) >= k}
    if not kept:
        raise AdaptationError(f"no voice has {k} transcribed utterances with a speaker label; "
                              "meta-training needs several voices of at least k utterances each")
    if len(kept) < len(by_voice):
        log.warning("%d voice(s) with fewer than k=%d utterances left out", len(by_voice) - len(kept), k)
    return kept


def _resumed(out: Path, expected: dict) -> dict | None:
    """The progress stored in `out` when it was written by a run of the same settings."""
    if not out.is_file():
        return None
    meta = load_state(out).get(INIT_KEY)
    if meta is None or meta["settings"] != expected:
        raise AdaptationError(f"{out} exists and was not written by a meta-train run with these settings; "
                              "choose another --out or delete it")
    return meta


def meta_train(checkpoint: str | Path, utts: list[Utterance], cfg: ParamSetConfig, out: str | Path,
               reptile: ReptileConfig = ReptileConfig(), progress: bool = False) -> dict:
    """Reptile over the voices of `utts`; writes (and resumes) `out`. Returns its `adaptation_init`."""
    out = Path(out)
    if cfg.kind == "speaker-embedding":
        raise AdaptationError("meta-train learns where gradient steps start; speaker-embedding takes none: "
                              "train its adapter with `mtspeech train-speaker-adapter`")
    voices = voices_of(utts, reptile.k)
    if reptile.meta_batch > len(voices):
        raise AdaptationError(f"--meta-batch {reptile.meta_batch} is larger than the {len(voices)} voices")
    state, model = load_base(checkpoint)
    pset = ParamSet(model, cfg)
    inner_lr = DEFAULT_LR[cfg.kind] if reptile.inner_lr is None else reptile.inner_lr
    settings = {"set": cfg.as_dict(), "reptile": asdict(reptile), "base_checkpoint": str(checkpoint),
                "voices": sorted(voices)}
    meta = _resumed(out, settings)
    phi = meta["tensors"] if meta else pset.initial(reptile.seed)
    done = meta["outer_steps_done"] if meta else 0
    seconds = meta["seconds"] if meta else 0.0
    if done:
        log.info("resuming %s at outer step %d of %d", out, done, reptile.outer_steps)
    geometry, task = model.geometry, model.tasks[model.asr_task]
    waves: dict[str, torch.Tensor] = {}  # audio read once, on first draw

    def batches_of(chosen: list[Utterance]):
        for u in chosen:
            if u.id not in waves:
                (waves[u.id],) = inputs.load_waves([u], geometry.sample_rate)
        return inputs.batches(chosen, [waves[u.id] for u in chosen], task, 60.0, geometry.sample_rate)

    def save(step: int) -> dict:
        entry = {"set": cfg.as_dict(), "tensors": {k: v.clone() for k, v in phi.items()}, "settings": settings,
                 "outer_steps_done": step, "seconds": seconds}
        save_atomic({**state, INIT_KEY: entry}, out)
        return entry

    entry = meta
    for step in tqdm(range(done, reptile.outer_steps), desc="meta-train", unit="outer step",
                     disable=not progress, dynamic_ncols=True, initial=done, total=reptile.outer_steps):
        t0 = time.perf_counter()
        rng = random.Random(reptile.seed * 1_000_003 + step)
        moved = {k: torch.zeros_like(v) for k, v in phi.items()}
        for voice in rng.sample(sorted(voices), reptile.meta_batch):
            chosen = rng.sample(voices[voice], reptile.k)
            result = fine_tune(model, pset, phi, batches_of(chosen), reptile.inner_steps, inner_lr)
            for k in phi:
                moved[k] += (result.trainable[k] - phi[k]) / reptile.meta_batch
        epsilon = reptile.outer_lr * (1 - step / reptile.outer_steps)
        phi = {k: phi[k] + epsilon * moved[k] for k in phi}
        seconds += time.perf_counter() - t0
        if (step + 1) % reptile.save_every == 0 or step + 1 == reptile.outer_steps:
            entry = save(step + 1)
    log.info("meta-trained %s over %d voices for %d outer steps (%.0f s): %s", cfg.kind, len(voices),
             reptile.outer_steps, seconds, out)
    return entry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mtspeech meta-train`."""
    parser.add_argument("checkpoint", help="trained checkpoint (final.pt)")
    parser.add_argument("--manifest", required=True, help="training voices' utterances (speaker labels, transcripts)")
    parser.add_argument("--out", required=True, help="the checkpoint to write: the base plus the learned start")
    add_set_arguments(parser)
    d = ReptileConfig()
    for name, kind in (("outer_steps", int), ("meta_batch", int), ("k", int), ("inner_steps", int),
                       ("inner_lr", float), ("outer_lr", float), ("seed", int), ("save_every", int)):
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name))


def main(args: argparse.Namespace) -> int:
    try:
        manifest = Path(args.manifest)
        utts = inputs.read_checked(manifest)
        reptile = ReptileConfig(args.outer_steps, args.meta_batch, args.k, args.inner_steps, args.inner_lr,
                                args.outer_lr, args.seed, args.save_every)
        meta_train(args.checkpoint, utts, set_config(args), args.out, reptile, progress=True)
    except AdaptationError as e:
        log.error("%s", e)
        return 2
    return 0
