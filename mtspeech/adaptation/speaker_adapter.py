"""Speaker-embedding conditioning: the speaker head's embedding of k utterances of a voice, mapped
to new values of the layer-norms set, with no gradient step.

    utterances ──model.encode──▶ speaker head's layer ──task.embed──▶ (k, E) embeddings
      ──voice_vector──▶ (E,) ──SpeakerAdapter──▶ Δ of every LayerNorm gain and bias of the set
      ──trained values + Δ──▶ the set's new values (an ordinary layer-norms delta)

A per-channel gain and bias computed from a conditioning vector is FiLM (Perez et al. 2018);
here it is realised as new values of LayerNorm weights that already exist, so the conditioned
model is a plain checkpoint: the delta file, `apply_delta`, its fingerprint, streaming, ONNX
export and `serve --adapted` per API key take it as they take a fine-tuned layer-norms set.
The adapter's output layer starts at zero, so an untrained adapter is the identity: it starts
at the trained model, as LoRA's zero factor does.

The adapter lives in a checkpoint beside the base weights, under `speaker_adapter` (written by
`mtspeech train-speaker-adapter`, `train_speaker_adapter.py`); `mtspeech adapt --params
speaker-embedding` reads it from there.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mtspeech.adaptation.param_sets import AdaptationError, ParamSet, ParamSetConfig
from mtspeech.tasks.base import Role, task_with_role
from mtspeech.tasks.layer_mix import task_input

ADAPTER_KEY = "speaker_adapter"  # a checkpoint's trained adapter (written by `mtspeech train-speaker-adapter`)


@dataclass(frozen=True)
class SpeakerAdapterConfig:
    """`layers`: the top encoder blocks on the ASR path whose LayerNorms it sets (None: all, as
    `--layers` of layer-norms); `hidden_dim`: width of its one hidden layer."""

    layers: int | None = None
    # Chosen on adapt-dev (docs/results/adaptation/speaker-embedding-adapt-dev-*.json): width 64
    # raised the new voices' CER at every k, input standardised or not; width 4 (with the
    # trainer's 200 steps) did not. Likely: with few training voices, a wide adapter fits them in
    # ways that do not carry over to other voices.
    hidden_dim: int = 4

    def __post_init__(self) -> None:
        if self.layers is not None and self.layers < 1:
            raise AdaptationError(f"--layers must be at least 1 (or left out for all), got {self.layers}")
        if self.hidden_dim < 1:
            raise AdaptationError(f"--hidden-dim must be at least 1, got {self.hidden_dim}")

    def param_set(self) -> ParamSetConfig:
        """The set the adapter writes (what its delta files declare)."""
        return ParamSetConfig("speaker-embedding", layers=self.layers)


class SpeakerAdapter(nn.Module):
    """Voice vector v (E,) → a delta for each tensor of the set: g(z) − g(0) with z = (v −
    center) / spread, g = Linear → GELU → Linear, the last one zero-initialised (an untrained
    adapter changes nothing).

    `center` and `spread` (buffers, set by the trainer) are the mean and per-dimension standard
    deviation of the training voices' vectors. At the mean voice the delta is zero by
    construction: the trained model already is the best single setting for those voices on
    average, so the adapter may only say how a voice differs from them. Dividing by the spread
    measures that difference in units of how much the training voices differ: a speaker head
    whose embeddings share one large direction (the tiny test model's: cosines of 0.99) would
    otherwise hand every voice nearly the same input. On the demo model this alone did not stop a
    wide adapter from raising adapt-dev's CER; a narrow one left it unchanged (`SpeakerAdapterConfig`).

    Args:
        cfg: its `SpeakerAdapterConfig`.
        embed_dim: E, the speaker head's embedding width.
        shapes: state key → shape of every tensor of the set, in the set's order.
    """

    def __init__(self, cfg: SpeakerAdapterConfig, embed_dim: int, shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        self.cfg, self.embed_dim = cfg, embed_dim
        self.shapes = {k: tuple(s) for k, s in shapes.items()}
        self.sizes = [math.prod(s) for s in self.shapes.values()]
        self.hidden = nn.Linear(embed_dim, cfg.hidden_dim)
        self.out = nn.Linear(cfg.hidden_dim, sum(self.sizes))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("center", torch.zeros(embed_dim))
        self.register_buffer("spread", torch.ones(embed_dim))

    def forward(self, voice: torch.Tensor) -> dict[str, torch.Tensor]:
        """voice (E,) → {state key: delta of that tensor's shape}."""
        if voice.shape != (self.embed_dim,):
            raise AdaptationError(f"the speaker adapter takes a voice vector of shape ({self.embed_dim},), "
                                  f"got {tuple(voice.shape)}")
        z = (voice - self.center.to(voice)) / self.spread.to(voice)
        both = self.out(F.gelu(self.hidden(torch.stack([z, torch.zeros_like(z)]))))
        flat = both[0] - both[1]
        return {k: part.reshape(shape) for (k, shape), part in zip(self.shapes.items(), flat.split(self.sizes))}

    def values(self, trained: dict[str, torch.Tensor], voice: torch.Tensor) -> dict[str, torch.Tensor]:
        """The set's new values for `voice` (E,): the trained ones plus the adapter's delta."""
        return {k: trained[k] + d for k, d in self(voice).items()}


def speaker_task(model: nn.Module) -> nn.Module:
    """The model's speaker-embedding head (by role); AdaptationError when it has none."""
    task = task_with_role(model.tasks, Role.SPEAKER_EMBEDDING)
    if task is None:
        raise AdaptationError("speaker-embedding conditioning needs a speaker head (a task whose role is "
                              f"speaker-embedding); this model's tasks are {sorted(model.tasks)}")
    return task


@torch.no_grad()
def embed_utterances(model: nn.Module, wavs: list[torch.Tensor]) -> torch.Tensor:
    """The speaker head's embedding of each waveform (S_i,), as the head pools a whole
    utterance: (N, E). One utterance per forward, in eval mode and full context, so an
    embedding does not depend on which others were drawn with it (a resumed run recomputes the
    same values)."""
    task = speaker_task(model)
    was_training = model.training
    model.eval()
    try:
        out = []
        for wav in wavs:
            device = next(model.parameters()).device
            enc = model.encode(wav[None].to(device), torch.tensor([wav.shape[0]], device=device))
            out.append(task.embed(task_input(task, enc), enc.lens)[0].float().cpu())
    finally:
        model.train(was_training)
    return torch.stack(out)


def voice_vector(embeddings: torch.Tensor) -> torch.Tensor:
    """k utterance embeddings (k, E) → one voice vector (E,): each made unit length (the head
    compares them by cosine, so their length carries no speaker), averaged, made unit length
    again (one utterance or twenty give a vector of the same scale) and scaled by √E, so its
    entries are of order 1, as a Linear layer's default initialisation expects."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise AdaptationError(f"a voice vector needs (k >= 1, E) embeddings, got shape {tuple(embeddings.shape)}")
    mean = F.normalize(embeddings.float(), dim=-1).mean(0)
    return F.normalize(mean, dim=0) * embeddings.shape[1] ** 0.5


def new_adapter(model: nn.Module, cfg: SpeakerAdapterConfig, seed: int = 0) -> tuple[SpeakerAdapter, ParamSet]:
    """An untrained adapter for `model` (its hidden layer drawn from `seed`) and the set it writes."""
    pset = ParamSet(model, cfg.param_set())
    embed_dim = int(speaker_task(model).embedding.out_features)
    with torch.random.fork_rng(devices=[]):  # seeded, without moving the caller's random stream
        torch.manual_seed(seed)
        adapter = SpeakerAdapter(cfg, embed_dim, {k: tuple(pset.state[k].shape) for k in pset.keys})
    return adapter, pset


def load_adapter(state: dict, model: nn.Module) -> tuple[SpeakerAdapter, ParamSet]:
    """The adapter stored in checkpoint dict `state` (for its `model`) and the set it writes;
    AdaptationError when there is none or it does not fit the model."""
    entry = state.get(ADAPTER_KEY)
    if entry is None:
        raise AdaptationError("--params speaker-embedding needs a speaker adapter in the checkpoint, and this one has "
                              "none: train one first (`mtspeech train-speaker-adapter CHECKPOINT --manifest "
                              "TRAINING_VOICES.jsonl --out WITH_ADAPTER.pt`) and adapt that checkpoint")
    adapter, pset = new_adapter(model, SpeakerAdapterConfig(**entry["config"]))
    if list(adapter.shapes) != list(entry["keys"]):
        raise AdaptationError("the checkpoint's speaker adapter was trained for other tensors than this model's "
                              "layer-norms set")
    try:
        adapter.load_state_dict(entry["state"])
    except RuntimeError as e:  # another architecture's adapter: shapes differ
        raise AdaptationError(f"the checkpoint's speaker adapter does not fit its model ({str(e)[:200]})") from None
    return adapter.eval(), pset


def adapter_entry(adapter: SpeakerAdapter, **extra) -> dict:
    """What a checkpoint stores under ADAPTER_KEY: config, the tensors it writes, its weights,
    and whatever the trainer adds (settings, progress)."""
    return {"config": asdict(adapter.cfg), "set": adapter.cfg.param_set().as_dict(), "keys": list(adapter.shapes),
            "state": {k: v.detach().clone() for k, v in adapter.state_dict().items()}, **extra}


@dataclass
class Conditioned:
    """The set's values for one voice, and the wall seconds from waveforms to them."""

    values: dict[str, torch.Tensor]
    seconds: float


@torch.no_grad()
def condition(model: nn.Module, adapter: SpeakerAdapter, pset: ParamSet, wavs: list[torch.Tensor]) -> Conditioned:
    """The set's values for the voice of `wavs` (k waveforms (S_i,) at the model's rate): no
    gradient step, one forward per utterance and one through the adapter."""
    t0 = time.perf_counter()
    voice = voice_vector(embed_utterances(model, wavs))
    values = adapter.values(pset.initial(), voice)
    return Conditioned({k: v.detach().cpu() for k, v in values.items()}, time.perf_counter() - t0)
