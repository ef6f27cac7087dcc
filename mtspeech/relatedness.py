"""Task relatedness during training: gradient cosines and lookahead inter-task affinity.

Every `train.relatedness_every` optimizer steps the trainer measures, on the step's first
batch and before training on it, two things about the shared (encoder) parameters θ_s:

- **gradient cosine** cos(∇L_aux, ∇L_main) of each auxiliary task with the main (ASR) task,
  over all shared parameters and per parameter group (`parameter_groups`: the front end and
  each encoder block). Keys `relatedness/cos/<task>` and `relatedness/cos/<task>/<group>`;
  a group one of the two gradients does not reach (a task reading layer 1 never reaches
  block 2) has no cosine and is left out.
- **lookahead affinity** (Fifty et al. 2021, "Efficiently Identifying Task Groupings"):
  Z_{j→i} = 1 − L_i(θ_s − lr·∇_s L_j) / L_i(θ_s), the relative drop in task i's loss on the
  same batch after a plain SGD step of size `lookahead_lr` on task j's gradient of the shared
  parameters (heads unchanged). Z > 0: a step on j helps i. Keys
  `relatedness/affinity/<j>/<i>` for every ordered pair, j = i included.
- **pairwise cosines per group** (on request, `pairs`; affinity-driven branching asks): cos of
  every two tasks' gradients on each parameter group, `relatedness/pair_cos/<a>/<b>/<group>`.

Losses are the raw task losses (the static weights left out: the cosine ignores scale, and
the affinity asks what a step on the task itself does to the others).

Training is unchanged by a measurement (tests/test_relatedness.py checks the weights and RNG
state after training with and without): every forward of the measurement starts from the
RNG state the measurement found and the state is restored after, so the training step that
follows draws the same SpecAugment masks and dropout the measurement saw; buffers and the
tasks' `too_short` counters are restored; gradients come from `torch.autograd.grad`, never
`.grad`; the lookahead step exists only inside `torch.func.functional_call`; the optimizer
is never touched. Cost: one forward with graph, one backward per task and one no-grad
forward per task (logged as `relatedness/seconds`).

Under DDP every rank measures on its own batch; `average_over_ranks` then averages each
value over the ranks that measured it (a rank whose batch lacks a task's labels counts out).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call

from mtspeech import checkpoint as ckpt

PREFIX = "relatedness"
LossFn = Callable[[Mapping[str, torch.Tensor] | None], Mapping[str, torch.Tensor]]


def parameter_groups(names: Sequence[str]) -> dict[str, list[int]]:
    """Shared parameter names → {group: indices into `names`}, in first-seen order.

    The leading components all names share (`encoder.`) are dropped; a group is then the
    first component, with the index when the second is one (a block of a ModuleList):
    `front.conv.0.weight` → `front`, `blocks.3.ff1.w` → `blocks.3`. Task towers split per tower
    and layer, so each tower's relatedness shows: `towers.blocks.asr.1.ff1.w` → `towers.asr.1`,
    `towers.stitches.0.alpha` → `towers.stitch.0`.
    """
    parts = [n.split(".") for n in names]
    while parts and all(len(p) > 1 and p[0] == parts[0][0] for p in parts):
        parts = [p[1:] for p in parts]
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(parts):
        if p[0] == "towers" and len(p) > 3 and p[1] == "blocks" and p[3].isdigit():
            key = f"towers.{p[2]}.{p[3]}"
        elif p[0] == "towers" and len(p) > 2 and p[1] == "stitches" and p[2].isdigit():
            key = f"towers.stitch.{p[2]}"
        else:
            key = f"{p[0]}.{p[1]}" if len(p) > 2 and p[1].isdigit() else p[0]
        groups.setdefault(key, []).append(i)
    return groups


def _pair_cosines(a_grads: Sequence[torch.Tensor | None], b_grads: Sequence[torch.Tensor | None],
                  groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """cos(g_a, g_b) over all parameters (key "") and per group; a zero-norm side leaves the key out."""
    dot, n_a, n_b = [], [], []  # per parameter, float64 (sums over millions of values)
    for a, b in zip(a_grads, b_grads):
        a = None if a is None else a.double().flatten()
        b = None if b is None else b.double().flatten()
        dot.append(0.0 if a is None or b is None else float(a @ b))
        n_a.append(0.0 if a is None else float(a @ a))
        n_b.append(0.0 if b is None else float(b @ b))
    out = {}
    for group, idx in [("", range(len(dot))), *groups.items()]:
        na, nb = sum(n_a[i] for i in idx), sum(n_b[i] for i in idx)
        if na > 0 and nb > 0:
            out[group] = sum(dot[i] for i in idx) / math.sqrt(na * nb)
    return out


def gradient_cosines(
    grads: Mapping[str, Sequence[torch.Tensor | None]],
    main_task: str,
    groups: Mapping[str, Sequence[int]],
) -> dict[str, float]:
    """cos(g_task, g_main) for every task but `main_task`, over all parameters and per group.

    grads: task → one gradient per shared parameter (None: the task does not reach it).
    Returns `relatedness/cos/<task>` and `relatedness/cos/<task>/<group>`; a cosine with a
    zero-norm side is undefined and left out.
    """
    out: dict[str, float] = {}
    if main_task not in grads:
        return out
    for task, g_task in grads.items():
        if task != main_task:
            for group, cos in _pair_cosines(g_task, grads[main_task], groups).items():
                out[f"{PREFIX}/cos/{task}" + (f"/{group}" if group else "")] = cos
    return out


def pair_cosines(grads: Mapping[str, Sequence[torch.Tensor | None]],
                 groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """cos(g_a, g_b) of every unordered task pair (a before b in `grads`' order), per group only:
    `relatedness/pair_cos/<a>/<b>/<group>`. The per-layer affinity that branching splits on."""
    tasks, out = list(grads), {}
    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            for group, cos in _pair_cosines(grads[a], grads[b], groups).items():
                if group:
                    out[f"{PREFIX}/pair_cos/{a}/{b}/{group}"] = cos
    return out


def measure_relatedness(
    loss_fn: LossFn,
    shared: Mapping[str, nn.Parameter],
    main_task: str,
    lookahead_lr: float,
    groups: Mapping[str, Sequence[int]] | None = None,
    pairs: bool = False,
) -> dict[str, float]:
    """Gradient cosines with `main_task` and the lookahead affinity matrix, on one batch
    (with `pairs`, also every task pair's cosine per group: `pair_cosines`).

    loss_fn(overrides): the present tasks' scalar losses on the batch, with the parameters
        named in `overrides` (name → tensor) replacing the module's own (None: none replaced).
    shared: name → shared parameter, in a fixed order.
    groups: group → indices into `shared` (default: `parameter_groups` of the names).

    Every call of `loss_fn` starts from the RNG state found on entry, which is restored on exit.
    """
    names, params = list(shared), list(shared.values())
    groups = parameter_groups(names) if groups is None else groups
    rng = ckpt.rng_state()
    try:
        losses = dict(loss_fn(None))
        losses = {k: v.to(torch.promote_types(v.dtype, torch.float32))  # fp32 at least (autocast)
                  for k, v in losses.items() if v.requires_grad and torch.isfinite(v)}
        grads = {}
        for i, (task, loss) in enumerate(losses.items()):
            grads[task] = torch.autograd.grad(loss, params, retain_graph=i + 1 < len(losses), allow_unused=True)
        base = {k: float(v.detach()) for k, v in losses.items()}
        del losses  # frees the graph before the lookahead forwards
        out = gradient_cosines(grads, main_task, groups) | (pair_cosines(grads, groups) if pairs else {})
        for j, g_j in grads.items():
            stepped = {n: p.detach() - lookahead_lr * g.to(p.dtype) for n, p, g in zip(names, params, g_j)
                       if g is not None}
            ckpt.set_rng_state(rng)
            with torch.no_grad():
                after = loss_fn(stepped)
            for i, l_i in base.items():
                if i in after and l_i != 0 and torch.isfinite(after[i]):
                    out[f"{PREFIX}/affinity/{j}/{i}"] = 1.0 - float(after[i]) / l_i
        return out
    finally:
        ckpt.set_rng_state(rng)


def model_loss_fn(model: nn.Module, wav: torch.Tensor, wav_lens: torch.Tensor, targets: Mapping,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> LossFn:
    """A `LossFn` over a MultiTaskModel batch (wav (B,S), wav_lens (B,), targets by task):
    the losses of the tasks with at least one label in the batch."""
    present = {k for k, t in targets.items() if bool(t.present.any())}

    def loss_fn(overrides):
        with autocast():
            if overrides:
                losses = functional_call(model, dict(overrides), (wav, wav_lens, targets), strict=False)[0]
            else:
                losses = model(wav, wav_lens, targets)[0]
        return {k: v for k, v in losses.items() if k in present}

    return loss_fn


class RelatednessProbe:
    """Measures a MultiTaskModel's task relatedness on a batch without changing its training.

    Args:
        model: the MultiTaskModel (not its DDP wrapper: the probe must not trigger DDP's hooks).
        lookahead_lr: the SGD step size of the affinity's lookahead.
        pairs: also measure every task pair's cosine per group (`pair_cosines`; branching reads them).
    """

    def __init__(self, model: nn.Module, lookahead_lr: float, pairs: bool = False):
        self.model, self.lookahead_lr, self.pairs = model, lookahead_lr, pairs
        names = {id(p): n for n, p in model.named_parameters()}
        self.shared = {names[id(p)]: p for p in model.shared_parameters()}
        self.groups = parameter_groups(list(self.shared))
        tasks, main = list(model.tasks), model.asr_task
        aux = [t for t in tasks if t != main]
        # Every key any rank might measure, in one order: the DDP average needs the same list everywhere.
        self.keys = ([f"{PREFIX}/cos/{t}" for t in aux]
                     + [f"{PREFIX}/cos/{t}/{g}" for t in aux for g in self.groups]
                     + [f"{PREFIX}/affinity/{j}/{i}" for j in tasks for i in tasks]
                     + [f"{PREFIX}/pair_cos/{a}/{b}/{g}" for k, a in enumerate(tasks) for b in tasks[k + 1:]
                        for g in self.groups if pairs]
                     + [f"{PREFIX}/seconds"])

    def measure(self, wav: torch.Tensor, wav_lens: torch.Tensor, targets: Mapping,
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict[str, float]:
        """wav (B,S), wav_lens (B,), targets by task → {key: value} (this rank's batch only)."""
        t0 = time.perf_counter()
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        counters = {n: t.too_short for n, t in self.model.tasks.items() if hasattr(t, "too_short")}
        try:
            out = measure_relatedness(model_loss_fn(self.model, wav, wav_lens, targets, autocast),
                                      self.shared, self.model.asr_task, self.lookahead_lr, self.groups,
                                      self.pairs)
        finally:
            with torch.no_grad():
                for n, b in self.model.named_buffers():
                    b.copy_(buffers[n])
            for n, value in counters.items():
                self.model.tasks[n].too_short = value
        out[f"{PREFIX}/seconds"] = time.perf_counter() - t0
        return out

    def average_over_ranks(self, values: Mapping[str, float], device: torch.device) -> dict[str, float]:
        """`average_over_ranks` over this probe's keys (call on every rank alike)."""
        return average_over_ranks(values, self.keys, device)


def average_over_ranks(values: Mapping[str, float], keys: Sequence[str], device: torch.device) -> dict[str, float]:
    """Each key's mean over the ranks that measured it, in one all-reduce; as is without DDP.

    `keys`: every key any rank may hold, in the same order on every rank.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(values)
    unknown = set(values) - set(keys)
    if unknown:
        raise KeyError(f"relatedness keys {sorted(unknown)} are not among the probe's keys")
    t = torch.zeros(2, len(keys), dtype=torch.float64, device=device)
    for k, key in enumerate(keys):
        if key in values:
            t[0, k], t[1, k] = values[key], 1.0
    dist.all_reduce(t)
    return {key: float(t[0, k] / t[1, k]) for k, key in enumerate(keys) if t[1, k] > 0}


def read_relatedness(train_log: str | Path) -> dict[str, list[tuple[int, float]]]:
    """A run's logged measurements from its `train_log.jsonl`: key → [(step, value)] by step
    (a resumed run's re-logged steps count once: the last record wins)."""
    by_key: dict[str, dict[int, float]] = {}
    path = Path(train_log)
    if not path.is_file():
        return {}
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line) if line.strip() else {}
        for key, value in rec.items():
            if key.startswith(PREFIX + "/"):
                by_key.setdefault(key, {})[rec["step"]] = value
    return {key: sorted(points.items()) for key, points in by_key.items()}


def late_means(series: Mapping[str, Sequence[tuple[int, float]]], fraction: float = 0.5) -> dict[str, float]:
    """Each key's mean over its last `fraction` of measurements (at least one): relatedness
    once training has settled, not the noisy first steps."""
    out = {}
    for key, points in series.items():
        if points:
            tail = points[len(points) - max(1, math.ceil(fraction * len(points))):]
            out[key] = sum(v for _, v in tail) / len(tail)
    return out
