"""Every task's scorer over one data set: what training's dev pass and `mtspeech evaluate` share.

    scorers = task_scorers(model.tasks)                 # evaluate passes its decoders by task name
    rows = add_batch(scorers, utts, model.task_logits(enc), enc)   # per utterance: task → record
    gather_over_ranks(scorers)                          # DDP: every rank scores all ranks' rows
    scores = finish(scorers)                            # metrics, counts, not_scored of every task
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.distributed as dist

from mtspeech.tasks.base import ScoredBatch, Scorer, Scores, ScoringOptions


def task_scorers(tasks: Mapping[str, torch.nn.Module], decoders: Mapping[str, Callable] | None = None,
                 max_trials: int = 10_000) -> dict[str, Scorer]:
    """name → a fresh scorer of every task; `decoders`: task name → its `ScoringOptions.decode`."""
    decoders = decoders or {}
    return {name: task.scorer(ScoringOptions(decode=decoders.get(name), max_trials=max_trials))
            for name, task in tasks.items()}


def add_batch(scorers: Mapping[str, Scorer], utts: list, logits: Mapping[str, torch.Tensor], enc) -> list[dict]:
    """Score one batch with every scorer; per row, task name → that task's record."""
    rows: list[dict] = [{} for _ in utts]
    for name, scorer in scorers.items():
        for row, record in zip(rows, scorer.add(ScoredBatch(utts, logits[name], enc))):
            row[name] = record
    return rows


def gather_over_ranks(scorers: Mapping[str, Scorer]) -> None:
    """Under DDP, give every rank's scorers the lists of all ranks (rank order), so each metric
    is computed once over the whole set, as in one process. A no-op in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, {name: s.collected for name, s in scorers.items()})
    for name, s in scorers.items():
        s.collected = {key: [x for part in parts for x in part[name][key]] for key in s.collected}


def finish(scorers: Mapping[str, Scorer]) -> Scores:
    """Every scorer's result, merged (keys are `<task name>/<metric>`, so they never clash)."""
    out = Scores()
    for s in scorers.values():
        scores = s.finish()
        out.metrics.update(scores.metrics)
        out.counts.update(scores.counts)
        out.not_scored.update(scores.not_scored)
    return out
