"""Affinity-driven branching: towers chosen from task affinity during training, not by hand.

After Fully-Adaptive Feature Sharing (Lu et al. 2017, "Fully-adaptive Feature Sharing in
Multi-Task Networks"): training starts hard-shared and the top of the encoder is widened
into per-group towers where the tasks stop agreeing. `encoder.branching: {kind: affinity,
warmup_steps: W, every: N, threshold: τ, max_layers: M}`:

1. **Warm-up.** For W optimizer steps the encoder is fully shared. Every N steps the
   relatedness probe (`relatedness.py`, `pairs=True`) measures, on the step's first batch,
   the cosine of every two tasks' gradients on each encoder block (`pair_cos`). Only the
   *candidate* tasks take part: those reading the top layer (or a learned mix), since a
   tower must end where its tasks read. The candidate layers are the top blocks above every
   layer another task reads or a head conditions (those must stay in the trunk), at most M.
2. **Rule** (`decide_branching`), on each task pair's mean cosine over the warm-up:
   - *groups*: average-linkage agglomerative clustering of the tasks on the top block's
     affinity (scipy), merging while the mean cosine between two groups is ≥ τ;
   - *depth*: walking down from the top, a block splits while every pair of groups has a
     mean cosine < τ on it; the first block where some two groups agree, and all below it,
     stay shared (towers are contiguous from the top; a deeper tree is not built).
   One group, or no block that splits: the encoder stays hard-shared.
3. **Split** (`split_into_towers`): each group gets a tower whose blocks are copies of the
   shared top blocks; the group's first task (config order) names it, the others follow it
   (`TowersConfig.followers`). The result is the structure hand-written towers build, so
   streaming, export and checkpoint loading share their code. Each tower parameter enters
   the optimizer with a copy of its source's AdamW state (`optim.rebuild_after_split`): every
   tower continues the shared layer's trajectory, as FAFS widens by copying.

The decision (groups, depth, every affinity it read, and the reason per block) goes to
`exp_dir/branching.json` and into the checkpoint (`branching`), whose config then holds the
decided `encoder.towers`, so `load_model` rebuilds the branched model from the file alone;
`last.pt` holds the warm-up's measurements too, so a run resumes on either side of the split.
The decision is a pure function of the measurements, which are seeded by `train.seed`
(under DDP, averaged over ranks, so every rank decides alike).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from torch import nn

from mtspeech.config import ConfigError
from mtspeech.encoders.towers import BranchingConfig, TowersConfig, split_into_towers
from mtspeech.relatedness import PREFIX

log = logging.getLogger(__name__)
RULE = ("groups: average-linkage clustering on the top block's mean gradient cosine, merging while >= threshold; "
        "depth: blocks from the top split while every pair of groups has a mean cosine < threshold")


def branching_candidates(model: nn.Module, max_layers: int | None) -> tuple[list[str], list[int]]:
    """The tasks that may branch (they read the top layer, or a learned mix) and the blocks
    that may split, top first. Raises ConfigError when fewer than two tasks or no block can."""
    from mtspeech.tasks.layer_mix import LEARNED

    enc, n = model.encoder, model.encoder.num_layers
    tasks = [name for name, t in model.tasks.items() if t.layer == LEARNED or t.layer % n == n - 1]
    if len(tasks) < 2:
        raise ConfigError(f"encoder.branching: only {tasks} read the top layer (or a learned mix); branching "
                          "splits the top among at least two such tasks: set their `layer: -1`")
    kept = [t.layer % n for name, t in model.tasks.items() if name not in tasks]  # layers read below the top
    kept += [int(i) for i in enc.conditioners]  # conditioning stays in the trunk (conformer.py)
    lowest = max(kept, default=-1) + 1
    layers = list(range(n - 1, lowest - 1, -1))[: max_layers or n]
    if not layers:
        raise ConfigError(f"encoder.branching: no block can split: a task reads, or a head conditions, layer "
                          f"{lowest - 1}, the top; read lower layers or leave encoder.branching out")
    return tasks, layers


def mean_affinity(measurements: Sequence[Mapping[str, float]], tasks: Sequence[str],
                  layer: int) -> tuple[np.ndarray, int]:
    """Block `layer`'s (T, T) mean pair cosine over the measurements (diagonal 1) and how many
    measurements held every pair. Raises if none did (a task without labels all warm-up)."""
    t = len(tasks)
    sums, counts = np.zeros((t, t)), np.zeros((t, t))
    for values in measurements:
        for i in range(t):
            for j in range(i + 1, t):
                key = f"{PREFIX}/pair_cos/{tasks[i]}/{tasks[j]}/blocks.{layer}"
                if key in values:
                    sums[i, j] += values[key]
                    counts[i, j] += 1
    upper = np.triu_indices(t, 1)
    if (counts[upper] == 0).any():
        missing = [f"{tasks[i]}/{tasks[j]}" for i, j in zip(*upper) if counts[i, j] == 0]
        raise RuntimeError(f"branching: no affinity measured for {missing} on block {layer} during the warm-up "
                           "(no measured batch held labels of both tasks?): raise encoder.branching.warmup_steps")
    mean = np.eye(t)
    mean[upper] = sums[upper] / counts[upper]
    mean.T[upper] = mean[upper]
    return mean, int(counts[upper].min())


def decide_branching(affinity: Mapping[int, np.ndarray], tasks: Sequence[str], threshold: float) -> dict:
    """The rule of the module docstring. affinity: block index → (T, T) mean cosine, ordered
    top block first. Returns the decision record (JSON-able): `groups`, `split_layers` (K),
    `towers` (a TowersConfig dict, or None: stay shared) and per block its affinities and why."""
    layers = list(affinity)
    top = affinity[layers[0]]
    distance = squareform(np.clip(1.0 - top, 0.0, 2.0), checks=False)  # cosine → dissimilarity
    labels = fcluster(linkage(distance, "average"), t=1.0 - threshold, criterion="distance")
    groups: dict[int, list[str]] = {}
    for task, label in zip(tasks, labels):
        groups.setdefault(int(label), []).append(task)  # config order, within and across groups
    groups_list = list(groups.values())
    index = {t: i for i, t in enumerate(tasks)}
    blocks, splitting = [], len(groups_list) > 1
    for layer in layers:
        a = affinity[layer]
        between = {f"{'+'.join(g)} | {'+'.join(h)}": float(np.mean([[a[index[x], index[y]] for y in h] for x in g]))
                   for k, g in enumerate(groups_list) for h in groups_list[k + 1:]}
        agree = {pair: v for pair, v in between.items() if v >= threshold}
        splitting = splitting and not agree
        if len(groups_list) == 1:
            why = f"one group: every task pair's linkage affinity on the top block is >= {threshold}"
        elif agree:
            why = f"stays shared: groups {sorted(agree)} agree here (mean cosine >= {threshold})"
        elif splitting:
            why = f"splits: every pair of groups has a mean cosine < {threshold}"
        else:
            why = "stays shared: a block above it stayed shared (towers are contiguous from the top)"
        blocks.append({"layer": layer, "split": splitting, "why": why, "between_groups": between,
                       "affinity": {f"{tasks[i]}/{tasks[j]}": float(a[i, j])
                                    for i in range(len(tasks)) for j in range(i + 1, len(tasks))}})
    depth = sum(b["split"] for b in blocks)
    towers = None
    if depth:
        towers = {"tasks": [g[0] for g in groups_list], "layers": depth,
                  "followers": {t: g[0] for g in groups_list for t in g[1:]}}
    return {"rule": RULE, "threshold": threshold, "tasks": list(tasks), "groups": groups_list,
            "split_layers": depth, "towers": towers, "blocks": blocks}


class AffinityBranching:
    """The warm-up's measurements and the decision, with `state_dict` for resume.

    Args:
        cfg: the encoder's branching config.
        model: the hard-shared MultiTaskModel (candidates are read from it; see `branching_candidates`).
    """

    def __init__(self, cfg: BranchingConfig, model: nn.Module):
        self.cfg = cfg
        self.tasks, self.layers = branching_candidates(model, cfg.max_layers)
        self.measurements: list[dict[str, float]] = []
        self.record: dict | None = None

    def wants_measurement(self, step: int) -> bool:
        """Whether step `step`'s first batch is measured (warm-up steps 0, N, 2N, ...)."""
        return self.record is None and step < self.cfg.warmup_steps and step % self.cfg.every == 0

    def add(self, step: int, values: Mapping[str, float]) -> None:
        """Keep a measurement's pair cosines of the candidate tasks (all ranks hold the same)."""
        keep = {k: v for k, v in values.items() if k.startswith(f"{PREFIX}/pair_cos/")}
        self.measurements.append({"step": step, **keep})

    def due(self, step: int) -> bool:
        """Whether the warm-up is over and the decision not yet taken."""
        return self.record is None and step >= self.cfg.warmup_steps

    def decide(self, step: int) -> dict:
        """Take the decision on the measurements so far; returns (and keeps) its record."""
        affinity, counts = {}, []
        for layer in self.layers:
            affinity[layer], n = mean_affinity(self.measurements, self.tasks, layer)
            counts.append(n)
        self.record = {"step": step, "measurements": min(counts),
                       **decide_branching(affinity, self.tasks, self.cfg.threshold)}
        return self.record

    def towers(self) -> TowersConfig | None:
        """The decided towers (None before the decision, or when the encoder stays shared)."""
        spec = (self.record or {}).get("towers")
        return None if spec is None else TowersConfig(tasks=tuple(spec["tasks"]), layers=spec["layers"],
                                                      followers=dict(spec["followers"]))

    def split(self, model: nn.Module) -> dict[nn.Parameter, nn.Parameter]:
        """Split `model`'s encoder as decided (see `split_into_towers`); {} when it stays shared."""
        towers = self.towers()
        return {} if towers is None else split_into_towers(model.encoder, towers)

    def write(self, exp_dir: str | Path) -> Path:
        """The decision record → `exp_dir/branching.json`."""
        path = Path(exp_dir) / "branching.json"
        path.write_text(json.dumps(self.record, indent=1))
        groups = " | ".join("+".join(g) for g in self.record["groups"])
        log.info("branching at step %d: groups %s, top %d block(s) split (%s)", self.record["step"], groups,
                 self.record["split_layers"], path)
        return path

    def state_dict(self) -> dict:
        return {"measurements": self.measurements, "record": self.record}

    def load_state_dict(self, state: Mapping) -> None:
        self.measurements, self.record = list(state["measurements"]), state["record"]
