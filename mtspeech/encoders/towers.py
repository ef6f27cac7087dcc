"""Task towers: the top encoder layers split per task, optionally joined by cross-stitch units.

Soft parameter sharing (Misra et al. 2016, "Cross-stitch networks for multi-task learning").
`encoder.towers: {tasks: [asr, phones], layers: 2, cross_stitch: true}` splits an L-layer
encoder into a shared trunk of L-K blocks and one tower of K blocks per named task, each
tower its own copy of the encoder's block (same class, fresh weights):

    trunk h_0 .. h_{L-K-1}  ─┬─ tower asr:    block → stitch → block → stitch
                             └─ tower phones: block → stitch → block → stitch

With `cross_stitch: true` a cross-stitch unit after each tower layer j mixes the towers'
outputs with a learned (T, T) matrix α_j: x'_t = Σ_s α_j[t, s] · x_s, initialised near the
identity (`self_weight` 0.9 on the diagonal, the rest shared equally off it), and trained at
`cross_stitch_lr_scale` times the base learning rate, as Misra et al. recommend (the trainer
gives α its own optimizer group, without weight decay, which would pull α towards zero
rather than the identity). Without cross-stitch the towers share nothing above layer L-K-1:
the "no sharing above layer N" baseline.

How tasks read the layers (see `EncoderOutput.task_layers`): every task still sees an
L-layer encoder, and its `layer` index (or learned mix) means what it always meant. A task
named in the towers sees the trunk followed by its own tower, and must read a tower layer
(a trunk layer would leave its tower without gradient; a `learned` mix spans both). A task
in `followers` (`{vad: phones}`) shares a named task's tower, with the same rule: a group
of tasks on one tower, which is what affinity-driven branching (`mtspeech/branching.py`)
builds. A task named nowhere sees the trunk followed by the *first* listed tower: the
trunk's continuation.

`split_into_towers` turns a hard-shared encoder into this structure at run time: each
tower's blocks start as copies of the shared top blocks (branching's split), so the state
dict, cache slots, streaming and export are those of towers written in the config.

Each stitch mixes frame by frame, so a streaming chunk's mix equals the full forward's on
the same frames; every tower block keeps its own slots in the `EncoderCache` (after the
trunk's, tower by tower: see `Towers.cache_slot`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn


@dataclass(frozen=True)
class TowersConfig:
    """Per-task towers over the top `layers` encoder layers (see the module docstring).

    tasks: the tasks with a tower of their own (at least two); the first one's tower is also
        what tasks not named here read above the trunk.
    layers: K, blocks per tower (1 .. the encoder's layers; equal to it leaves no trunk).
    cross_stitch: mix the towers after each layer with a learned α (False: no sharing above the trunk).
    cross_stitch_lr_scale: α's learning rate over the base `optim.lr` (Misra et al.: 10-100x).
    self_weight: α's initial diagonal; the off-diagonal entries start at (1 - self_weight)/(T - 1).
    followers: task → the named task whose tower it shares (a group of tasks on one tower).
    """

    tasks: tuple[str, ...]
    layers: int
    cross_stitch: bool = False
    cross_stitch_lr_scale: float = 10.0
    self_weight: float = 0.9
    followers: Mapping[str, str] = field(default_factory=dict)  # task → the named task whose tower it shares

    def __post_init__(self):
        if len(self.tasks) < 2 or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"encoder.towers.tasks: {list(self.tasks)} must name at least two different tasks "
                             "(one tower alone is the hard-shared encoder)")
        bad = [t for t in self.tasks if not t or "." in t]
        if bad:
            raise ValueError(f"encoder.towers.tasks: {bad} are not usable task names (empty or with a dot)")
        if self.layers < 1:
            raise ValueError(f"encoder.towers.layers must be >= 1, got {self.layers}")
        if self.cross_stitch_lr_scale <= 0:
            raise ValueError(f"encoder.towers.cross_stitch_lr_scale must be > 0, got {self.cross_stitch_lr_scale}")
        if not 0.0 <= self.self_weight <= 1.0:
            raise ValueError(f"encoder.towers.self_weight must be in [0, 1], got {self.self_weight}")
        for task, tower in self.followers.items():
            if tower not in self.tasks or task in self.tasks or not task or "." in task:
                raise ValueError(f"encoder.towers.followers: {task}: {tower} must map a task without a tower of "
                                 f"its own to one of encoder.towers.tasks {list(self.tasks)}")

    def tower_of(self, task: str) -> str | None:
        """The tower task `task` reads: its own, the one it follows, or None (the trunk's continuation)."""
        return task if task in self.tasks else self.followers.get(task)


BRANCHING_KINDS = ("affinity",)


@dataclass(frozen=True)
class BranchingConfig:
    """Towers chosen during training from task affinity (`mtspeech/branching.py`), not by hand."""

    kind: str = "affinity"  # the one rule so far: FAFS-style widening from the top by gradient cosine
    warmup_steps: int = 100  # optimizer steps of hard-shared training before the split is decided
    every: int = 5  # measure the affinity every N steps of the warm-up (step 0 included)
    # a block splits where every pair of task groups has a mean gradient cosine below it (in [-1, 1])
    threshold: float = 0.0
    max_layers: int | None = None  # the most top layers that may split (None: as many as the tasks allow)

    def __post_init__(self):
        if self.kind not in BRANCHING_KINDS:
            raise ValueError(f"encoder.branching.kind: {self.kind!r} is not one of {list(BRANCHING_KINDS)}")
        if self.warmup_steps < 1 or not 1 <= self.every <= self.warmup_steps:
            raise ValueError(f"encoder.branching: warmup_steps={self.warmup_steps} must be >= 1 and "
                             f"every={self.every} in 1..warmup_steps (at least one measurement before the split)")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"encoder.branching.threshold={self.threshold} must be a cosine in [-1, 1]")
        if self.max_layers is not None and self.max_layers < 1:
            raise ValueError(f"encoder.branching.max_layers={self.max_layers} must be >= 1 or null (no cap)")


class CrossStitch(nn.Module):
    """One cross-stitch unit: T towers' activations mixed by a learned (T, T) matrix α.

    Args:
        towers: T, the number of towers.
        self_weight: α's initial diagonal; off-diagonal entries start at (1 - self_weight)/(T - 1).
    """

    def __init__(self, towers: int, self_weight: float = 0.9):
        super().__init__()
        if towers < 2:
            raise ValueError(f"a cross-stitch unit joins at least two towers, got {towers}")
        alpha = torch.full((towers, towers), (1.0 - self_weight) / (towers - 1))
        alpha.fill_diagonal_(self_weight)
        self.alpha = nn.Parameter(alpha)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """xs: T tensors (B,T',D), tower order → T tensors (B,T',D), x'_t = Σ_s α[t,s]·x_s."""
        if len(xs) != self.alpha.shape[0]:
            raise ValueError(f"cross-stitch unit built for {self.alpha.shape[0]} towers got {len(xs)}")
        mixed = torch.einsum("ts,sbnd->tbnd", self.alpha.to(xs[0].dtype), torch.stack(xs))
        return list(mixed.unbind(0))


# A block step: (cache slot, block, input (B,T',D)) → the block's output (B,T',D), padding zeroed.
# The encoder supplies it: the full forward runs the block under its chunk mask, the chunked
# forward also reads and writes the slot's cache entries.
BlockStep = Callable[[int, nn.Module, torch.Tensor], torch.Tensor]


class Towers(nn.Module):
    """T towers of K blocks each over a trunk output, with optional cross-stitch units.

    Args:
        cfg: the towers' config.
        make_block: builds one encoder block (the encoder's own block class).
        first_slot: the cache slot of tower 0's first block (= the trunk's depth).
    """

    def __init__(self, cfg: TowersConfig, make_block: Callable[[], nn.Module], first_slot: int):
        super().__init__()
        self.cfg, self.tasks, self.depth, self.first_slot = cfg, tuple(cfg.tasks), cfg.layers, first_slot
        self.blocks = nn.ModuleDict({t: nn.ModuleList(make_block() for _ in range(cfg.layers)) for t in cfg.tasks})
        self.stitches = (nn.ModuleList(CrossStitch(len(cfg.tasks), cfg.self_weight) for _ in range(cfg.layers))
                         if cfg.cross_stitch else None)

    @property
    def cache_slots(self) -> int:
        """Cache slots the towers add to the trunk's: T·K."""
        return len(self.tasks) * self.depth

    def cache_slot(self, tower: int, layer: int) -> int:
        """The EncoderCache slot of tower `tower`'s block `layer` (0-based within the tower)."""
        return self.first_slot + tower * self.depth + layer

    def forward(self, h: torch.Tensor, step: BlockStep) -> dict[str, list[torch.Tensor]]:
        """h (B,T',D) the trunk's output → task → its tower's K outputs (B,T',D), after stitching."""
        xs = [h] * len(self.tasks)
        outs: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        for j in range(self.depth):
            xs = [step(self.cache_slot(i, j), self.blocks[t][j], x) for i, (t, x) in enumerate(zip(self.tasks, xs))]
            if self.stitches is not None:
                xs = self.stitches[j](xs)  # zero (padding) frames stay zero: the mix is linear
            for t, x in zip(self.tasks, xs):
                outs[t].append(x)
        return outs | {task: outs[tower] for task, tower in self.cfg.followers.items()}

    def alphas(self) -> list[torch.Tensor]:
        """Each tower layer's α (T, T), bottom first; empty without cross-stitch."""
        return [] if self.stitches is None else [s.alpha for s in self.stitches]


def split_into_towers(encoder: nn.Module, cfg: TowersConfig) -> dict[nn.Parameter, nn.Parameter]:
    """Split a hard-shared encoder's top `cfg.layers` blocks into towers, in place.

    Every tower's block j starts as a copy of shared block L-K+j (weights, not just shapes),
    so right after the split every task computes what it computed before: FAFS widens a
    layer by copying it. The encoder ends as `towers.py` builds it from a config with
    `towers: cfg` (same state-dict keys and cache slots); its `cfg` says so.

    Returns: each new tower parameter → the shared parameter it was copied from, for the
    optimizer to carry that parameter's state over (trunk parameters stay the same objects).
    """
    if getattr(encoder, "towers", None) is not None:
        raise ValueError("the encoder already has towers: it can be split only once")
    if cfg.cross_stitch:
        raise ValueError("a split copies hard-shared blocks; it adds no cross-stitch units")
    trunk = len(encoder.blocks) - cfg.layers
    if trunk < 0:
        raise ValueError(f"cannot split the top {cfg.layers} layers of a {len(encoder.blocks)}-layer encoder")
    encoder.cfg = dataclasses.replace(encoder.cfg, towers=cfg, branching=None)  # validates, as a config would
    shared = list(encoder.blocks[trunk:])
    towers = Towers(cfg, lambda: copy.deepcopy(shared[0]), trunk)
    sources = {}
    for task in cfg.tasks:
        for block, source in zip(towers.blocks[task], shared):
            block.load_state_dict(source.state_dict())
            sources.update(zip(block.parameters(), source.parameters()))
    encoder.blocks = nn.ModuleList(encoder.blocks[:trunk])
    encoder.towers = towers
    return sources


def cross_stitch_alphas(encoder: nn.Module) -> dict[str, float]:
    """`cross_stitch/{layer}/{to}/{from}` → α value, for logging; empty without cross-stitch.

    layer: the tower layer, 0 at the bottom of the towers; `to` reads `from` with weight α.
    """
    towers = getattr(encoder, "towers", None)
    if towers is None:
        return {}
    out = {}
    for j, alpha in enumerate(towers.alphas()):
        rows = alpha.detach().tolist()
        for a, to in enumerate(towers.tasks):
            for b, src in enumerate(towers.tasks):
                out[f"cross_stitch/{j}/{to}/{src}"] = rows[a][b]
    return out


def cross_stitch_param_group(encoder: nn.Module, base_lr: float) -> dict | None:
    """The optimizer group of the encoder's α parameters (None without cross-stitch): their own
    learning rate, `cross_stitch_lr_scale` × `base_lr`, and no weight decay (decay would pull α
    towards zero, not towards the identity it starts at)."""
    towers = getattr(encoder, "towers", None)
    if towers is None or not towers.alphas():
        return None
    return {"params": towers.alphas(), "lr": base_lr * towers.cfg.cross_stitch_lr_scale, "weight_decay": 0.0}
