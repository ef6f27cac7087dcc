"""Duration-bucketed dynamic batching, DDP-aware, with exact mid-epoch resume.

A batch is limited by padded audio seconds, not by count: `len(batch) · max duration ≤
max_batch_seconds`, so a batch of short utterances holds many and one of long utterances
few, and the GPU sees about the same amount of (padded) audio each step. Utterances are
sorted into `num_buckets` equal-count duration buckets; each epoch shuffles within buckets,
packs them greedily and shuffles the batch order — all from `(seed, epoch)`, so every rank
computes the same global batch list without communicating and takes every
`world_size`-th batch. The position within the epoch is the whole state (lhotse-style), so
`load_state_dict(state_dict())` resumes with exactly the batches not yet handed out.
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)


class DurationBatchSampler(torch.utils.data.Sampler):
    """Yields lists of dataset indices (use as `DataLoader(batch_sampler=...)`).

    Args:
        durations: seconds per utterance, indexed like the dataset.
        max_batch_seconds: budget for `batch size × longest duration in the batch`. An
            utterance longer than the budget forms a batch of its own (a warning is logged).
        shuffle: shuffle within buckets and the batch order per epoch; False packs in
            duration order (evaluation).
        seed: with the epoch, determines the order on every rank.
        sorted_epochs: SortaGrad (Amodei et al. 2016, Deep Speech 2): in the first this many
            epochs the batches come shortest first instead of shuffled. CTC leaves its blank
            plateau sooner on short utterances, whose alignments are nearly forced.
        num_buckets: equal-count duration buckets (more: less padding, less randomness).
        rank, world_size: DDP position. Every rank gets the same number of batches and ranks
            get disjoint utterances: when the batch count does not divide by `world_size`,
            the largest batches are split in two until it does (`drop_last=True` drops the
            surplus batches instead). Only with fewer utterances than ranks are some repeated.
    """

    def __init__(self, durations: Sequence[float], max_batch_seconds: float, shuffle: bool = True,
                 seed: int = 0, num_buckets: int = 16, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, sorted_epochs: int = 0):
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be ≥ 1, got {num_buckets}")
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1 or (self.durations < 0).any() or not np.isfinite(self.durations).all():
            raise ValueError("durations must be a flat sequence of finite non-negative seconds")
        self.max_batch_seconds = float(max_batch_seconds)
        self.shuffle = shuffle
        self.seed = seed
        self.num_buckets = num_buckets
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        if sorted_epochs < 0:
            raise ValueError(f"sorted_epochs must be >= 0, got {sorted_epochs}")
        self.sorted_epochs = sorted_epochs
        self.epoch = 0
        self.position = 0  # batches of this epoch already handed out on this rank
        self._cache: tuple[int, list[list[int]]] | None = None
        self._warned_long = False

    # ------------------------------------------------------------------ epoch plan
    def _global_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches for `epoch`, in order, before sharding."""
        order = np.argsort(self.durations, kind="stable")
        if not self.shuffle:
            return self._pack(order)
        rng = np.random.default_rng([self.seed, epoch])
        if epoch < self.sorted_epochs:  # SortaGrad: shortest first, ties in a seeded order
            perm = rng.permutation(len(self.durations))
            return self._pack(perm[np.argsort(self.durations[perm], kind="stable")])
        # A bucket ends in one part-filled batch, so give each at least ~2 batches of audio.
        num_buckets = min(self.num_buckets, max(1, int(self.durations.sum() / (2 * self.max_batch_seconds))))
        buckets = np.array_split(order, num_buckets)
        batches = [b for bucket in buckets for b in self._pack(rng.permutation(bucket))]
        return [batches[i] for i in rng.permutation(len(batches))]

    def _pack(self, indices: np.ndarray) -> list[list[int]]:
        """Greedy packing in the given order under the padded-seconds budget."""
        batches: list[list[int]] = []
        cur: list[int] = []
        cur_max = 0.0
        too_long = 0
        for i in indices.tolist():
            d = self.durations[i]
            too_long += d > self.max_batch_seconds
            longest = max(cur_max, d)
            if cur and (len(cur) + 1) * longest > self.max_batch_seconds:
                batches.append(cur)
                cur, longest = [], d
            cur.append(i)
            cur_max = longest
        if cur:
            batches.append(cur)
        if too_long and not self._warned_long:
            self._warned_long = True
            log.warning("%d utterance(s) longer than max_batch_seconds=%.1f s each form a batch of "
                        "their own; raise the budget or filter them out", too_long, self.max_batch_seconds)
        return batches

    def _equalise(self, batches: list[list[int]]) -> list[list[int]]:
        """Make the batch count divisible by world_size (see the class docstring)."""
        w = self.world_size
        surplus = len(batches) % w
        if surplus == 0:
            return batches
        if self.drop_last:
            return batches[: len(batches) - surplus]
        batches = list(batches)
        for _ in range(w - surplus):
            k = max(range(len(batches)), key=lambda j: len(batches[j]), default=None)
            if k is None or len(batches[k]) < 2:
                break
            half = len(batches[k]) // 2
            batches[k: k + 1] = [batches[k][:half], batches[k][half:]]
        if len(batches) % w:  # nothing left to split: repeat some so no rank waits for the others
            missing = w - len(batches) % w
            log.warning("%d batches of single utterances for %d ranks: repeating %d batch(es)",
                        len(batches), w, missing)
            batches += [batches[j % len(batches)] for j in range(missing)] if batches else []
        return batches

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of `epoch` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            mine = self._equalise(self._global_batches(epoch))[self.rank:: self.world_size]
            self._cache = (epoch, mine)
        return self._cache[1]

    # ------------------------------------------------------------------ Sampler API
    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        if self.position >= len(batches):  # a finished epoch iterated again starts over
            self.position = 0
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield list(batch)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the current epoch: packing varies a little)."""
        return len(self.batches())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order. A new epoch starts at position 0; setting the epoch the
        sampler is already in (e.g. right after `load_state_dict`) keeps the position."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """Resumable state. `batches_consumed` overrides the position with the number of this
        epoch's batches the training loop actually used: a DataLoader with workers draws
        batches ahead (prefetching), so the sampler's own count can run a few batches ahead."""
        position = self.position if batches_consumed is None else int(batches_consumed)
        return {"epoch": self.epoch, "position": position, "seed": self.seed,
                "world_size": self.world_size, "num_utterances": len(self.durations),
                "max_batch_seconds": self.max_batch_seconds, "shuffle": self.shuffle,
                "num_buckets": self.num_buckets}

    def load_state_dict(self, state: dict) -> None:
        """Restore epoch and position; the next `__iter__` yields exactly the remaining batches.

        Raises ValueError if the state came from a different data set or set-up, since the
        remaining batches could not be reproduced (start a fresh epoch or restore the set-up).
        """
        mine = self.state_dict()
        diff = [k for k in ("seed", "world_size", "num_utterances", "max_batch_seconds", "shuffle", "num_buckets")
                if k in state and state[k] != mine[k]]
        if diff and state.get("position", 0) > 0:
            raise ValueError("sampler state does not match this sampler ("
                             + ", ".join(f"{k}: saved {state[k]!r}, now {mine[k]!r}" for k in diff)
                             + "); cannot resume mid-epoch — restore the original data/DDP set-up")
        self.epoch = int(state["epoch"])
        self.position = int(state.get("position", 0)) if not diff else 0
