"""The parameter sets `mtspeech adapt` may change, and their delta.

A set names a few tensors of a trained model; adaptation trains only those, with every other
weight frozen, and the result is written back into ordinary weights, so an adapted checkpoint
is a plain checkpoint: `evaluate`, `transcribe`, `serve`, streaming and ONNX export read it
unchanged (the streaming step never learns it was adapted).

    input-norm   the global CMVN statistics (`cmvn.mean`, `cmvn.std`, F values each): a new
                 microphone or channel is largely a shift and scale of the log-mel features.
                 The std is trained as its log, so it stays positive.
    layer-norms  the LayerNorm gains and biases of the top `layers` encoder blocks on the ASR
                 path (all blocks when `layers` is None): per-channel rescaling of every block.
    speaker-embedding
                 the layer-norms tensors, set with no gradient step: a speaker adapter
                 (`speaker_adapter.py`, trained by `mtspeech train-speaker-adapter`) maps the
                 speaker head's embedding of the k utterances to their new values.
    lora         a low-rank update ΔW = (alpha / rank) · B A of the attention (or feed-forward)
                 projections of the top `layers` blocks (Hu et al. 2021); B starts at zero, so
                 adaptation starts at the trained model. Merged into W when written.

Every set's trainable tensors live in a plain dict `{name: tensor}` (what the optimizer and
Reptile update); `ParamSet.overrides` turns it into the model's own state keys for
`torch.func.functional_call`, and `delta` into the small file `mtspeech adapt` writes beside
the checkpoint (the new values, or LoRA's factors), which `apply_delta` puts back on the base
weights: the very weights it was made from, whose fingerprint the file records.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mtspeech.tasks.layer_mix import LEARNED

KINDS = ("input-norm", "layer-norms", "lora", "speaker-embedding")
LORA_TARGETS = ("attention", "feed-forward")
_LORA_A, _LORA_B, _LOG_STD = ".lora_A", ".lora_B", ".log"


class AdaptationError(ValueError):
    """Adaptation cannot run on this input; the message names the file, utterance or option."""


def require_counts(config, names: tuple[str, ...]) -> None:
    """AdaptationError naming the command-line option when one of `config`'s counts is below 1."""
    for name in names:
        if getattr(config, name) < 1:
            raise AdaptationError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")


@dataclass(frozen=True)
class ParamSetConfig:
    """Which tensors adaptation changes. `layers`: how many of the top encoder blocks on the
    ASR path (None: all) for layer-norms and lora; `rank`, `alpha`, `target`: LoRA's rank, its
    scale numerator (ΔW is scaled by alpha / rank) and the projections it updates."""

    kind: str
    layers: int | None = None
    rank: int = 4
    alpha: float = 8.0
    target: str = "attention"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AdaptationError(f"unknown parameter set {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.layers is not None and self.layers < 1:
            raise AdaptationError(f"--layers must be at least 1 (or left out for all), got {self.layers}")
        if self.rank < 1:
            raise AdaptationError(f"--rank must be at least 1, got {self.rank}")
        if self.target not in LORA_TARGETS:
            raise AdaptationError(f"unknown LoRA target {self.target!r}; choose one of {', '.join(LORA_TARGETS)}")

    def as_dict(self) -> dict:
        return asdict(self)


def asr_path_blocks(model: nn.Module) -> list[str]:
    """Module names of the encoder blocks the ASR head's input passes through, bottom first:
    the trunk, then the ASR task's tower when the encoder has towers, up to the layer it reads."""
    enc = model.encoder
    blocks = [f"encoder.blocks.{i}" for i in range(len(enc.blocks))]
    towers = getattr(enc, "towers", None)
    if towers is not None:
        tower = towers.cfg.followers.get(model.asr_task, model.asr_task)
        if tower in towers.tasks:
            blocks += [f"encoder.towers.blocks.{tower}.{j}" for j in range(towers.depth)]
    layer = model.tasks[model.asr_task].layer
    if layer != LEARNED:  # a head reading a lower layer is not changed by the blocks above it
        blocks = blocks[: layer % len(blocks) + 1]
    return blocks


class ParamSet:
    """The tensors `cfg` adapts in `model` (which is only read)."""

    def __init__(self, model: nn.Module, cfg: ParamSetConfig):
        self.cfg = cfg
        self.state = {k: v.detach() for k, v in model.state_dict().items()}
        blocks = asr_path_blocks(model)
        if cfg.kind != "input-norm" and cfg.layers is not None and cfg.layers > len(blocks):
            raise AdaptationError(f"--layers {cfg.layers}: the ASR path has only {len(blocks)} encoder blocks")
        top = tuple(b + "." for b in blocks[-(cfg.layers or len(blocks)):])
        if cfg.kind == "input-norm":
            self.keys = ["cmvn.mean", "cmvn.std"]
        elif cfg.kind in ("layer-norms", "speaker-embedding"):  # the conditioning writes the layer-norms set
            self.keys = [f"{name}.{p}" for name, m in model.named_modules()
                         if isinstance(m, nn.LayerNorm) and name.startswith(top) and m.elementwise_affine
                         for p in ("weight", "bias") if getattr(m, p) is not None]
        else:
            self.keys = [f"{name}.weight" for name, m in model.named_modules()
                         if isinstance(m, nn.Linear) and name.startswith(top) and _is_target(name, cfg.target)]
        if not self.keys:
            what = f"{cfg.target} projections" if cfg.kind == "lora" else "LayerNorms with gains"
            raise AdaptationError(f"parameter set {cfg.kind!r} finds no {what} in the top {cfg.layers or len(blocks)} "
                                  "encoder blocks on this model's ASR path")

    def initial(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """The trainable tensors at the trained model's values (LoRA: A random from `seed`, B zero)."""
        if self.cfg.kind == "input-norm":
            return {"cmvn.mean": self.state["cmvn.mean"].clone(),
                    "cmvn.std" + _LOG_STD: self.state["cmvn.std"].log()}
        if self.cfg.kind in ("layer-norms", "speaker-embedding"):
            return {k: self.state[k].clone() for k in self.keys}
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for k in self.keys:
            d_out, d_in = self.state[k].shape
            out[k + _LORA_A] = torch.randn(self.cfg.rank, d_in, generator=gen) / d_in ** 0.5
            out[k + _LORA_B] = torch.zeros(d_out, self.cfg.rank)
        return out

    def delta(self, trainable: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the delta file holds: the new values (input-norm, layer-norms) or LoRA's factors."""
        if self.cfg.kind == "input-norm":
            return {"cmvn.mean": trainable["cmvn.mean"], "cmvn.std": trainable["cmvn.std" + _LOG_STD].exp()}
        return dict(trainable)

    def overrides(self, trainable: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """State key → value with the set's tensors applied (differentiable in `trainable`)."""
        return changed_weights(self.state, self.cfg, self.delta(trainable))

    def merged_state(self, trainable: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's whole state dict with the adapted tensors written in (detached, on the
        CPU, as checkpoints hold them whatever device adaptation ran on)."""
        with torch.no_grad():
            merged = {**self.state, **self.overrides(trainable)}
            return {k: v.detach().to("cpu", copy=True) for k, v in merged.items()}


def _is_target(module_name: str, target: str) -> bool:
    """Whether a Linear named `module_name` is a LoRA target: the attention's projections
    (`...attn.qkv`, `...attn.out`) or the feed-forward modules' (`...ff1.net.1`, `...ff2.net.4`)."""
    parts = module_name.split(".")
    if target == "attention":
        return "attn" in parts
    return any(p.startswith("ff") for p in parts)


def changed_weights(state: dict[str, torch.Tensor], cfg: ParamSetConfig,
                    delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State key → new value for every tensor a delta changes: LoRA's factors merged into their
    weight W + (alpha / rank) B A, any other entry the new value itself."""
    scale = cfg.alpha / cfg.rank
    targets = {k[: -len(_LORA_A)] if k.endswith(_LORA_A) else k for k in delta if not k.endswith(_LORA_B)}
    unknown = targets - set(state)
    if unknown:
        raise AdaptationError(f"the delta names tensors this model does not have: {sorted(unknown)[:5]}")
    out = {}
    for key in targets:
        base = state[key]
        if key + _LORA_A in delta:
            a, b = delta.get(key + _LORA_A), delta.get(key + _LORA_B)
            if a is None or b is None or a.ndim != 2 or b.ndim != 2 or (b.shape[0], a.shape[1]) != base.shape \
                    or a.shape[0] != b.shape[1]:
                shapes = [None if t is None else tuple(t.shape) for t in (b, a)]
                raise AdaptationError(f"the delta's LoRA factors of {key} (B, A shapes {shapes}) do not fit its "
                                      f"weight of shape {tuple(base.shape)}")
            out[key] = base + scale * (b.to(base.device) @ a.to(base.device))
        else:
            if delta[key].shape != base.shape:  # a delta of another architecture: refuse, never broadcast
                raise AdaptationError(f"the delta's {key} has shape {tuple(delta[key].shape)}; this model's has "
                                      f"{tuple(base.shape)}")
            out[key] = delta[key].to(base.device)
    return out


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a state dict's names, dtypes, shapes and values: what a delta file records
    of the weights it was made from (two checkpoints of the same weights share it)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def apply_delta(state: dict[str, torch.Tensor], delta_file: dict) -> dict[str, torch.Tensor]:
    """A base model's state dict with a delta file's tensors applied (a new dict): how an adapted
    model is rebuilt from the base checkpoint and the small file `mtspeech adapt` writes.
    Raises AdaptationError for a file that is not a delta or does not fit `state` (a tensor the
    model lacks, a shape it does not have, or weights other than those it was made from, when
    the file records them: `base_weights`)."""
    if not isinstance(delta_file, dict) or not isinstance(delta_file.get("set"), dict) \
            or not isinstance(delta_file.get("tensors"), dict):
        raise AdaptationError("not a delta file of `mtspeech adapt` (expected 'set' and 'tensors' entries)")
    made_from = delta_file.get("base_weights")
    if made_from is not None and made_from != weights_fingerprint(state):
        # Same names and shapes, other values: the merged model would be neither adapted nor base.
        raise AdaptationError("the delta was made from other weights than these (its base_weights fingerprint "
                              "differs): apply it to the checkpoint it was adapted from")
    try:
        cfg = ParamSetConfig(**delta_file["set"])
    except TypeError as e:  # a key ParamSetConfig does not have
        raise AdaptationError(f"the delta's parameter set {delta_file['set']} is not one adapt writes ({e})") from None
    if not all(isinstance(t, torch.Tensor) for t in delta_file["tensors"].values()):
        raise AdaptationError("the delta's 'tensors' entry holds values that are not tensors")
    with torch.no_grad():
        return {**state, **changed_weights(state, cfg, delta_file["tensors"])}
