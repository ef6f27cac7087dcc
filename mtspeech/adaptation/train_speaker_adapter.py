"""`mtspeech train-speaker-adapter`: learn the speaker adapter (`speaker_adapter.py`) across
training voices, so that `mtspeech adapt --params speaker-embedding` adapts with no gradient step.

    mtspeech train-speaker-adapter exp/synthetic/all/final.pt \\
        --manifest data/synthetic/train.jsonl data/synthetic/train-voices.jsonl \\
        --out exp/synthetic/all-adapter/adapter.pt
    mtspeech adapt exp/synthetic/all-adapter/adapter.pt --manifest data/synthetic/test-voices.jsonl \\
        --speaker 1170 --k 5 --params speaker-embedding --out exp/adapted/1170-embedding.pt

The base model is frozen; only the adapter learns. It first embeds every utterance of the
training voices, for the mean and spread of their voice vectors: the adapter's zero point and
units (`SpeakerAdapter`). Each step then draws `voices_per_step` voices and, for each, a
support of k of its utterances (k itself drawn from 1..`max_k`, so one adapter serves every k)
and `query` OTHER utterances of the same voice. The adapter maps the support's voice vector to
the set's values, and the loss is the ASR CTC loss of the query under them: the support's words
are never scored, so the adapter can only gain by what the voice's utterances share, which is
what it must do for a voice it has never heard.

The output is the base checkpoint, weights unchanged (evaluating it evaluates the base model),
with the adapter stored beside them under `speaker_adapter` (config, weights, Adam's state,
settings, progress). Written every `save_every` steps. Which voices and utterances a step
draws is a function of (seed, step) alone and the step size is constant, so a run started
again with the same settings resumes exactly where it stopped, and one started with more
`--steps` continues it (the settings that must match leave `--steps` out).
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
from mtspeech.adaptation.command import load_base
from mtspeech.adaptation.fine_tune import batch_loss, frozen, units
from mtspeech.adaptation.param_sets import AdaptationError, require_counts
from mtspeech.adaptation.reptile import voices_of
from mtspeech.adaptation.speaker_adapter import (ADAPTER_KEY, SpeakerAdapterConfig, adapter_entry, embed_utterances,
                                                 new_adapter, voice_vector)
from mtspeech.checkpoint import load_state, save_atomic
from mtspeech.data.manifest import Utterance

log = logging.getLogger(__name__)

# Voice vectors have entries of order 1 (`voice_vector`); a dimension in which the training
# voices spread less than this is divided by this instead.
SPREAD_FLOOR = 1e-3


@dataclass(frozen=True)
class AdapterTrainingConfig:
    """Adam steps, voices per step, the largest support k (each step draws k from 1..max_k,
    fewer where a voice has too few utterances), query utterances per voice, the step size, the
    seed of every draw and of the adapter's first layer, and how often the output is saved."""

    steps: int = 200  # chosen on adapt-dev (hidden_dim 4): 400 fitted the training voices further and did worse
    voices_per_step: int = 2
    max_k: int = 20
    query: int = 4
    lr: float = 1e-3
    seed: int = 0
    save_every: int = 50

    def __post_init__(self) -> None:
        require_counts(self, ("steps", "voices_per_step", "max_k", "query", "save_every"))
        if not self.lr > 0:
            raise AdaptationError(f"--lr must be positive, got {self.lr}")

    def identity(self) -> dict:
        """The settings a resumed run must share (more --steps, or another --save-every, continue it)."""
        return {k: v for k, v in asdict(self).items() if k not in ("steps", "save_every")}


def draw(voices: dict[str, list[Utterance]], cfg: AdapterTrainingConfig,
         step: int) -> list[tuple[list[Utterance], list[Utterance]]]:
    """Step `step`'s (support, query) per drawn voice: disjoint utterances of one voice, a
    function of (cfg.seed, step) only."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    out = []
    for voice in rng.sample(sorted(voices), cfg.voices_per_step):
        utts = voices[voice]
        k = rng.randint(1, min(cfg.max_k, len(utts) - cfg.query))
        drawn = rng.sample(utts, k + cfg.query)
        out.append((drawn[:k], drawn[k:]))
    return out


def _resumed(out: Path, expected: dict) -> dict | None:
    """The adapter entry stored in `out` when a run of the same settings wrote it."""
    if not out.is_file():
        return None
    entry = load_state(out).get(ADAPTER_KEY)
    if entry is None or entry.get("settings") != expected:
        raise AdaptationError(f"{out} exists and was not written by a train-speaker-adapter run with these settings; "
                              "choose another --out or delete it")
    return entry


def train_speaker_adapter(checkpoint: str | Path, utts: list[Utterance], out: str | Path,
                          adapter_cfg: SpeakerAdapterConfig = SpeakerAdapterConfig(),
                          training: AdapterTrainingConfig = AdapterTrainingConfig(), device: str = "cpu",
                          progress: bool = False) -> dict:
    """Train the adapter on the voices of `utts` (training voices only); writes and resumes
    `out`. Returns its `speaker_adapter` entry."""
    out = Path(out)
    voices = voices_of(utts, 1 + training.query)  # a support of at least one, and the query
    if training.voices_per_step > len(voices):
        raise AdaptationError(f"--voices-per-step {training.voices_per_step} is larger than the {len(voices)} voices "
                              f"with at least {1 + training.query} transcribed utterances")
    state, model = load_base(checkpoint)
    model.to(device)
    adapter, pset = new_adapter(model, adapter_cfg, training.seed)
    adapter.to(device)
    opt = torch.optim.Adam(adapter.parameters(), lr=training.lr)
    settings = {"adapter": asdict(adapter_cfg), "training": training.identity(), "base_checkpoint": str(checkpoint),
                "voices": sorted(voices)}
    entry = _resumed(out, settings)
    done, seconds, losses = 0, 0.0, []
    if entry is not None:
        adapter.load_state_dict(entry["state"])
        opt.load_state_dict(entry["optimizer"])
        done, seconds, losses = entry["steps_done"], entry["seconds"], list(entry["query_losses"])
        if done > training.steps:
            raise AdaptationError(f"{out} has already trained {done} steps, more than --steps {training.steps}")
        log.info("resuming %s at step %d of %d", out, done, training.steps)
    trained = {k: v.to(device) for k, v in pset.initial().items()}
    geometry, task = model.geometry, model.tasks[model.asr_task]
    embeddings: dict[str, torch.Tensor] = {}  # utterance id → its speaker embedding, computed on first draw

    def voice_of(support: list[Utterance]) -> torch.Tensor:
        new = [u for u in support if u.id not in embeddings]
        if new:
            wavs = inputs.load_waves(new, geometry.sample_rate)
            embeddings.update(zip([u.id for u in new], embed_utterances(model, wavs)))
        return voice_vector(torch.stack([embeddings[u.id] for u in support])).to(device)

    if entry is None:  # the training voices' mean voice vector (where the delta is zero) and spread
        t0 = time.perf_counter()
        every = tqdm(sorted(voices), desc="embed training voices", unit="voice", disable=not progress, leave=False)
        vectors = torch.stack([voice_of(voices[v]) for v in every])
        adapter.center.copy_(vectors.mean(0))
        # population std (one voice: none, hence the floor); the floor keeps a dimension in which
        # the training voices agree from turning a new voice's rounding noise into a large input
        adapter.spread.copy_(vectors.std(0, correction=0).clamp(min=SPREAD_FLOOR))
        seconds += time.perf_counter() - t0

    def save(step: int) -> dict:
        saved = adapter_entry(adapter, optimizer=opt.state_dict(), settings=settings, steps_done=step,
                              seconds=seconds, query_losses=list(losses))
        save_atomic({**state, ADAPTER_KEY: saved}, out)
        return saved

    bar = tqdm(range(done, training.steps), desc="train-speaker-adapter", unit="step", disable=not progress,
               dynamic_ncols=True, initial=done, total=training.steps)
    with frozen(model), torch.enable_grad():  # frozen: the base's weights get no gradient, the adapter's do
        for step in bar:
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for support, query in draw(voices, training, step):
                values = adapter.values(trained, voice_of(support))
                wavs = inputs.load_waves(query, geometry.sample_rate)
                batches = inputs.batches(query, wavs, task, 60.0, geometry.sample_rate)
                n = units(batches, task.name)
                loss = sum(batch_loss(model, pset, values, b, n, torch.device(device)) for b in batches)
                (loss / training.voices_per_step).backward()  # one voice's graph at a time
                total += float(loss.detach()) / training.voices_per_step
            opt.step()
            losses.append(total)
            seconds += time.perf_counter() - t0
            recent = losses[-50:]
            bar.set_postfix(query_loss=f"{sum(recent) / len(recent):.3f}")
            if (step + 1) % training.save_every == 0 or step + 1 == training.steps:
                entry = save(step + 1)
    log.info("trained a speaker adapter over %d voices for %d steps (%.0f s): %s", len(voices), training.steps,
             seconds, out)
    return entry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mtspeech train-speaker-adapter`."""
    parser.add_argument("checkpoint", help="trained checkpoint (final.pt) with a speaker head")
    parser.add_argument("--manifest", required=True, nargs="+",
                        help="training voices' utterances (speaker labels, transcripts); several are joined")
    parser.add_argument("--out", required=True, help="the checkpoint to write: the base plus the adapter")
    parser.add_argument("--layers", type=int, default=None,
                        help="top encoder blocks on the ASR path whose LayerNorms it sets (default all)")
    parser.add_argument("--hidden-dim", type=int, default=SpeakerAdapterConfig.hidden_dim)
    d = AdapterTrainingConfig()
    for name, kind in (("steps", int), ("voices_per_step", int), ("max_k", int), ("query", int), ("lr", float),
                       ("seed", int), ("save_every", int)):
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name))
    parser.add_argument("--device", default="cpu")


def main(args: argparse.Namespace) -> int:
    try:
        utts = [u for manifest in args.manifest for u in inputs.read_checked(manifest)]
        training = AdapterTrainingConfig(args.steps, args.voices_per_step, args.max_k, args.query, args.lr,
                                         args.seed, args.save_every)
        train_speaker_adapter(args.checkpoint, utts, args.out, SpeakerAdapterConfig(args.layers, args.hidden_dim),
                              training, device=args.device, progress=True)
    except AdaptationError as e:
        log.error("%s", e)
        return 2
    return 0
