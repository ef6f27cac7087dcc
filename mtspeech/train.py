"""The one training loop for every recipe: single process (CPU/GPU) or DDP via torchrun.

    mtspeech train --config recipes/synthetic/conformer.yaml [--set optim.lr=1e-3 ...]
    torchrun --nproc_per_node 4 -m mtspeech.cli train --config ...

Resumption is exact: the checkpoint carries model, optimizer, scheduler, loss weighting,
sampler position and RNG states, and training restarts from `exp_dir/last.pt` on its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mtspeech import checkpoint as ckpt
from mtspeech.data.augment import for_epoch as augment_for_epoch
from mtspeech.data.dataset import UtteranceDataset, collate_batch
from mtspeech.data.manifest import read_manifest, read_manifests
from mtspeech.data.sampler import DurationBatchSampler
from mtspeech.experiment import Experiment, build_model, experiment_to_dict, fit_labels
from mtspeech.relatedness import RelatednessProbe
from mtspeech.encoders.towers import cross_stitch_alphas, cross_stitch_param_group
from mtspeech.tasks.layer_mix import layer_weights
from mtspeech.tasks.scoring import add_batch, finish, gather_over_ranks, task_scorers
from mtspeech.weighting import build_weighting

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where this process runs: device, DDP rank and world size."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str) -> Runtime:
    """Initialise DDP when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world_size > 1:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        return Runtime(torch.device(device), rank, world_size)
    return Runtime(torch.device(device))


def lr_lambda(optim_cfg, total_steps: int):
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the peak at `total_steps`."""

    def f(step: int) -> float:
        if step < optim_cfg.warmup_steps:
            return (step + 1) / optim_cfg.warmup_steps
        progress = min(1.0, (step - optim_cfg.warmup_steps) / max(1, total_steps - optim_cfg.warmup_steps))
        return optim_cfg.min_lr_ratio + (1 - optim_cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def resolve_amp(device: torch.device, amp: str) -> str:
    """`auto` → bf16 on CUDA, off elsewhere; other values as given (validated by TrainConfig)."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return amp


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


class Trainer:
    """Owns model, optimizer, scheduler, weighting, sampler and their checkpointing."""

    def __init__(self, exp: Experiment, runtime: Runtime | None = None):
        self.exp = exp
        self.rt = runtime or setup_runtime(exp.train.device)
        self.exp_dir = Path(exp.exp_dir)
        if exp.train.threads:
            torch.set_num_threads(exp.train.threads)
        torch.manual_seed(exp.train.seed)

        self.train_utts = read_manifests(exp.data.train)
        if exp.data.max_utterance_seconds:
            kept = [u for u in self.train_utts if u.duration <= exp.data.max_utterance_seconds]
            if len(kept) < len(self.train_utts):
                log.warning("dropped %d training utterances longer than %.0f s",
                            len(self.train_utts) - len(kept), exp.data.max_utterance_seconds)
            self.train_utts = kept
        if not self.train_utts:
            raise ValueError(f"training manifest {exp.data.train} holds no usable utterance")
        self.dev_utts = read_manifest(exp.data.dev) if exp.data.dev else []

        self.labels = self._labels()
        self.model = build_model(exp, self.labels).to(self.rt.device)
        self.task_names = list(exp.tasks)
        self.weighting = build_weighting(exp.weighting, self.task_names, {n: c.weight for n, c in exp.tasks.items()})
        self.weighting.to(self.rt.device)
        o = exp.optim
        # The weighting's own parameters (uncertainty's log-variances) get no weight decay:
        # decay would pull every task's learned weight towards 1 for no reason.
        # Cross-stitch α (encoders/towers.py) trains at its own, higher rate, as Misra et al. do.
        stitch = cross_stitch_param_group(self.model.encoder, o.lr)
        own = {id(p) for p in stitch["params"]} if stitch else set()
        groups = [{"params": [p for p in self.model.parameters() if id(p) not in own]}, *([stitch] if stitch else [])]
        if list(self.weighting.parameters()):
            groups.append({"params": list(self.weighting.parameters()), "weight_decay": 0.0})
        # The fused kernel is one pass over all parameters: on a 2-core CPU the default
        # per-tensor loop took 19 ms a step for the demo model, the fused one 4 ms.
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                           fused=self.rt.device.type in ("cpu", "cuda"))
        self.amp = resolve_amp(self.rt.device, exp.train.amp)
        # fp16 needs loss scaling (its gradients underflow); bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.amp == "fp16")

        self.sampler = DurationBatchSampler(
            [u.duration for u in self.train_utts], exp.data.max_batch_seconds, shuffle=True,
            seed=exp.train.seed, rank=self.rt.rank, world_size=self.rt.world_size,
        )
        steps_per_epoch = math.ceil(len(self.sampler) / o.accum_steps)
        self.total_steps = exp.train.max_steps or steps_per_epoch * exp.train.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(o, self.total_steps))
        self.step = 0
        self.epoch = 0
        self.batches_done = 0  # of this epoch, as consumed by the loop (workers prefetch ahead)
        self.history: list[dict] = []  # per-epoch dev results
        self.stopped_by = "cap"  # or "plateau", set when fit() ends (stopping.json)
        self.skipped_batches = 0
        self._rng_of_ranks: list[dict] | None = None  # set by save_last() around its state_dict()

        resumed = self._maybe_resume()
        if not resumed:
            self._fit_cmvn()
        self.ddp = None
        if self.rt.world_size > 1:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.rt.device.index] if self.rt.device.type == "cuda" else None
            )
        self.relatedness = (RelatednessProbe(self.model, exp.train.relatedness_lookahead_lr)
                            if exp.train.relatedness_every else None)
        self._related_step: int | None = None  # the step last measured (a skipped batch must not repeat it)
        self.tb = None
        if self.rt.main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.exp_dir / "tb"), purge_step=self.step or None)
            self.step_log = open(self.exp_dir / "train_log.jsonl", "a")

    # ----------------------------------------------------------------- set-up
    def _labels(self) -> dict:
        """Fit label spaces on rank 0 (tokenizer training etc.), share through exp_dir."""
        path = self.exp_dir / "labels.json"
        if self.rt.main and not path.exists():
            labels = fit_labels(self.exp, self.train_utts)
            path.write_text(json.dumps(labels, indent=1))
        self._barrier()
        return json.loads(path.read_text())

    def _fit_cmvn(self) -> None:
        """Global mean/variance of log-mel over a seeded sample of training utterances."""
        from mtspeech.data.audio import load_audio

        g = torch.Generator().manual_seed(self.exp.train.seed)
        n = min(self.exp.data.cmvn_utterances, len(self.train_utts))
        idx = torch.randperm(len(self.train_utts), generator=g)[:n].tolist()
        total, total_sq, count = 0.0, 0.0, 0
        for i in idx:
            try:
                wav = load_audio(self.train_utts[i].audio)
            except ValueError as e:
                log.warning("CMVN: skipping %s", e)
                continue
            feats, _ = self.model.fbank(wav[None], torch.tensor([len(wav)]))
            feats = feats[0].double()
            total = total + feats.sum(0)
            total_sq = total_sq + (feats**2).sum(0)
            count += feats.shape[0]
        if count == 0:
            raise ValueError("no readable training audio to fit feature normalisation")
        mean = total / count
        std = (total_sq / count - mean**2).clamp_min(1e-8).sqrt()
        self.model.cmvn.set_stats(mean.float(), std.float())
        if self.rt.world_size > 1:  # every rank must normalise identically
            for buf in (self.model.cmvn.mean, self.model.cmvn.std):
                dist.broadcast(buf, 0)

    def _barrier(self) -> None:
        if self.rt.world_size > 1:
            dist.barrier()

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "config": experiment_to_dict(self.exp),
            "labels": self.labels,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "sampler": self.sampler.state_dict(batches_consumed=self.batches_done),
            "step": self.step,
            "epoch": self.epoch,
            "history": self.history,
            "scaler": self.scaler.state_dict(),
            # Every rank's own RNG state (dropout, SpecAugment draw from them): index = rank.
            "rng": {"per_rank": self._rng_of_ranks or [ckpt.rng_state()]},
        }

    def save(self, name: str) -> Path | None:
        """Write a checkpoint from rank 0 (other ranks return None)."""
        if not self.rt.main:
            return None
        return ckpt.save_atomic(self.state_dict(), self.exp_dir / name)

    def save_last(self) -> Path | None:
        """`last.pt`, for resumption: call on every rank, which all hand in their RNG states."""
        rng = ckpt.rng_state()
        if self.rt.world_size > 1:
            gathered: list = [None] * self.rt.world_size
            dist.all_gather_object(gathered, rng)
            self._rng_of_ranks = gathered
        else:
            self._rng_of_ranks = [rng]
        try:
            return self.save("last.pt")
        finally:
            self._rng_of_ranks = None

    def _maybe_resume(self) -> bool:
        path = self.exp_dir / "last.pt"
        if self.rt.main:  # a process killed mid-write leaves its temp file; the rename never ran
            for stale in self.exp_dir.glob(".*.pt.*.tmp"):
                log.warning("removing %s, left by a checkpoint write that was interrupted", stale)
                stale.unlink(missing_ok=True)
        if not path.exists():
            return False
        state = ckpt.load_state(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.weighting.load_state_dict(state["weighting"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.epoch, self.history = state["step"], state["epoch"], state["history"]
        self.batches_done = state["sampler"]["position"]
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(self._own_rng(state["rng"]))
        log.info("resumed from %s at epoch %d step %d", path, self.epoch, self.step)
        return True

    def _own_rng(self, rng: dict) -> dict:
        """This rank's RNG state from a checkpoint (older checkpoints hold rank 0's only)."""
        per_rank = rng.get("per_rank", [rng])
        if len(per_rank) != self.rt.world_size:
            log.warning("checkpoint holds RNG states of %d ranks, this run has %d: ranks beyond "
                        "them reuse rank 0's", len(per_rank), self.rt.world_size)
        return per_rank[self.rt.rank] if self.rt.rank < len(per_rank) else per_rank[0]

    def _agree(self, *flags: bool) -> list[bool]:
        """Each flag ANDed over all ranks (one tiny all-reduce), so every skip decision is
        taken by all ranks together: a rank that skipped alone would leave the others
        waiting in the gradient all-reduce for ever."""
        if self.rt.world_size == 1:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32,
                         device=self.rt.device if self.rt.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return [bool(v) for v in t.tolist()]

    # ---------------------------------------------------------------- training
    def _augment(self):
        """The loader augmentation of the current epoch (`augment.for_epoch`)."""
        return augment_for_epoch(self.exp.data.augment, self.epoch)

    def _loader(self, utts, sampler, train: bool):
        dataset = UtteranceDataset(
            utts, dict(self.model.tasks), train=train,
            speed_factors=self.exp.data.speed_perturb if train else None,
            seed=self.exp.train.seed * 100_003 + self.epoch,
            perturbed_speaker=self.exp.data.perturbed_speaker,
            augment=self._augment() if train else None,
        )
        # A private generator: creating the loader must not consume the global torch RNG
        # (that would shift dropout/SpecAugment after a resume mid-epoch).
        generator = torch.Generator().manual_seed(self.exp.train.seed * 7919 + self.epoch)
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate_batch,
            num_workers=self.exp.data.num_workers, persistent_workers=False,
            pin_memory=self.rt.device.type == "cuda", generator=generator,
        )

    def fit(self) -> dict:
        """Train to the configured length; returns the last dev results."""
        exp = self.exp
        module = self.ddp or self.model
        while self.epoch < exp.train.epochs and self.step < self.total_steps and not self._plateaued():
            self.sampler.set_epoch(self.epoch)
            self.model.train()
            # Resumed at the very end of an epoch: nothing left to draw (the sampler would
            # otherwise start the epoch over).
            epoch_left = self.batches_done < len(self.sampler)
            loader = self._loader(self.train_utts, self.sampler, train=True) if epoch_left else []
            bar = tqdm(total=len(self.sampler), initial=self.batches_done,
                       desc=f"epoch {self.epoch}", disable=not self.rt.main, dynamic_ncols=True, leave=False)
            accum = 0
            for batch in loader:
                bar.update(1)
                self.batches_done += 1
                # The sampler gives every rank the same number of batches, so all ranks agree
                # on the last one; it syncs, so no accumulated gradient crosses the epoch.
                last_of_epoch = self.batches_done == len(self.sampler)
                (readable,) = self._agree(batch is not None)
                if not readable:  # some rank's batch was entirely unreadable audio
                    continue
                batch = batch.to(self.rt.device)
                if accum == 0 and self.relatedness is not None:
                    self._measure_relatedness(batch)
                sync = accum + 1 == exp.optim.accum_steps or last_of_epoch
                no_sync = self.ddp is not None and (not sync or self.weighting.syncs_model_grads)
                with self.ddp.no_sync() if no_sync else contextlib.nullcontext(), \
                        _autocast(self.rt.device, self.amp):
                    losses, _, _ = module(batch.wav, batch.wav_lens, batch.targets)
                # A task without any label in this batch sits the step out (its zero loss
                # would otherwise drag adaptive weightings). Its zero loss, which has a graph,
                # rides along on another task's loss: the value is unchanged, but its head
                # gets a (zero) gradient, which DDP needs from every rank for every parameter.
                labelled = {k: bool(batch.targets[k].present.any()) for k in losses}
                absent = [v for k, v in losses.items() if not labelled[k]]
                losses = {k: v.float() for k, v in losses.items() if labelled[k]}
                if losses and absent:
                    first = next(iter(losses))
                    losses[first] = losses[first] + sum(absent)
                finite = all(torch.isfinite(v) for v in losses.values())
                any_labels, finite = self._agree(bool(losses), finite)
                if not finite:  # on some rank: the whole accumulation window is dropped
                    self._skip(batch, losses)
                    accum = 0
                    continue
                if not any_labels:  # some rank's batch has no label for any task
                    continue
                # Accumulation scales what is differentiated, not the losses the weighting sees.
                self.weighting.backward(losses, self.model.shared_parameters(), self.step,
                                        scale_fn=lambda total: self.scaler.scale(total / exp.optim.accum_steps))
                accum += 1
                if not sync:
                    continue
                accum = 0
                if self._optimizer_step():
                    self._log_step(losses, bar)
                if exp.train.checkpoint_every_steps and self.step % exp.train.checkpoint_every_steps == 0:
                    self.save_last()
                if self.step >= self.total_steps:
                    break
            if accum:  # the epoch's last batches were skipped after some were accumulated
                log.warning("epoch %d: dropped the gradients of %d micro-batches left at its end", self.epoch, accum)
                self._drop_gradients()
            bar.close()
            self.epoch += 1
            self.batches_done = 0
            self.sampler.set_epoch(self.epoch)  # position 0 of the next epoch, for resume
            results = self.evaluate_dev()
            self.history.append({"epoch": self.epoch, "step": self.step, **results})
            self.save_last()
            self._keep_best(results)
            if self.rt.main:
                log.info("epoch %d step %d: %s", self.epoch, self.step,
                         " ".join(f"{k}={v:.4g}" for k, v in results.items()))
        self.stopped_by = "plateau" if self._plateaued(quiet=True) else "cap"
        self._finish()
        return self.history[-1] if self.history else {}

    def _optimizer_step(self) -> bool:
        """Clip, guard against non-finite gradients, step. Returns False if skipped.
        Gradients are already averaged over ranks here, so every rank decides alike."""
        self.weighting.sync_grads(list(self.model.parameters()))
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.exp.optim.clip_grad_norm)
        if not torch.isfinite(norm):
            self.skipped_batches += 1
            if self.scaler.is_enabled():  # fp16 overflow: lower the scale and go on
                self.scaler.update()
            log.warning("step %d: non-finite gradient norm, update skipped (%d so far)", self.step, self.skipped_batches)
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return True

    def _skip(self, batch, losses) -> None:
        self.skipped_batches += 1
        bad = [k for k, v in losses.items() if not torch.isfinite(v)]
        log.warning("step %d: non-finite loss for %s on batch %s…, batch skipped (%d so far)",
                    self.step, bad or "(another rank)", batch.ids[:3], self.skipped_batches)
        self._drop_gradients()

    def _drop_gradients(self) -> None:
        """Forget the accumulation window: the optimizer's and the weighting's (PCGrad's buffer)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.weighting.zero_grad(set_to_none=True)

    def _log_step(self, losses: dict, bar) -> None:
        if not self.rt.main or self.step % self.exp.train.log_every_steps:
            return
        weights = self.weighting.weights()
        record = {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0],
                  **{f"loss/{k}": v.item() for k, v in losses.items()},
                  **{f"weight/{k}": float(w) for k, w in weights.items()},
                  **{f"too_short/{k}": t.too_short for k, t in self.model.tasks.items()
                     if getattr(t, "too_short", 0)},
                  **{f"layer_weight/{t}/{k}": w for t, ws in layer_weights(self.model.tasks).items()
                     for k, w in enumerate(ws)},
                  **cross_stitch_alphas(self.model.encoder)}
        for key, value in record.items():
            if key not in ("step", "epoch"):
                self.tb.add_scalar(key, value, self.step)
        self.step_log.write(json.dumps(record) + "\n")
        self.step_log.flush()
        bar.set_postfix({k.split("/")[1]: f"{v:.3g}" for k, v in record.items() if k.startswith("loss/")})

    def _measure_relatedness(self, batch) -> None:
        """Task relatedness (mtspeech/relatedness.py) on a step's first batch, every
        `relatedness_every` steps, before the step trains on it (which it leaves unchanged)."""
        if self.step % self.exp.train.relatedness_every or self.step == self._related_step:
            return
        self._related_step = self.step
        values = self.relatedness.measure(batch.wav, batch.wav_lens, batch.targets,
                                          autocast=lambda: _autocast(self.rt.device, self.amp))
        values = self.relatedness.average_over_ranks(values, self.rt.device)  # all ranks call it alike
        if self.rt.main:
            for key, value in values.items():
                self.tb.add_scalar(key, value, self.step)
            self.step_log.write(json.dumps({"step": self.step, "epoch": self.epoch, **values}) + "\n")
            self.step_log.flush()

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate_dev(self) -> dict:
        """Dev losses (summed over ranks) and every task's metrics: its scorer (the one `mtspeech
        evaluate` uses, decoding greedy) over the rows of all ranks."""
        if not self.dev_utts:
            return {}
        self.model.eval()
        sampler = DurationBatchSampler([u.duration for u in self.dev_utts], self.exp.data.max_batch_seconds,
                                       shuffle=False, rank=self.rt.rank, world_size=self.rt.world_size)
        sums: dict[str, list[float]] = {}
        scorers = task_scorers(self.model.tasks)  # the same scorers as `mtspeech evaluate`, greedy decoding
        for batch in self._loader(self.dev_utts, sampler, train=False):
            if batch is None:
                continue
            batch = batch.to(self.rt.device)
            enc = self.model.encode(batch.wav, batch.wav_lens, chunk_frames=self.exp.train.stream_eval_chunk_frames)
            logits = self.model.task_logits(enc)
            losses = self.model.losses(enc, logits, batch.targets)
            for name in self.model.tasks:
                n = int(batch.targets[name].present.sum())
                _add(sums, f"{name}/loss", losses[name].item() * n, n)
            add_batch(scorers, batch.utts, logits, enc)
        if self.rt.world_size > 1:
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
            dist.all_reduce(t)
            sums = dict(zip(keys, t.tolist()))
        gather_over_ranks(scorers)
        results = {k: num / den for k, (num, den) in sums.items() if den > 0} | finish(scorers).metrics
        if self.tb is not None:
            for k, v in results.items():
                self.tb.add_scalar(f"dev/{k}", v, self.step)
            record = {"step": self.step, "epoch": self.epoch + 1, **{f"dev/{k}": v for k, v in results.items()}}
            self.step_log.write(json.dumps(record) + "\n")
            self.step_log.flush()
        return results

    def _plateaued(self, quiet: bool = False) -> bool:
        """Early stop: the main task's dev metric of the last `patience` epochs is no better than
        its best before them, and that best had improved on the first epoch's value: CTC's
        blank plateau at the start (CER 1.0 for several epochs) is flat too, but not the end.
        Dev results are summed over ranks, so every rank agrees; the history is in `last.pt`,
        so a resumed run that had stopped stays stopped."""
        patience, key = self.exp.train.patience, self._best_key()
        scores = [h[key] for h in self.history if key in h]
        if not patience or len(scores) <= patience:
            return False
        earlier = min(scores[:-patience])
        stop = earlier < scores[0] and min(scores[-patience:]) >= earlier
        if stop and self.rt.main and not quiet:
            log.info("early stop after epoch %d: dev %s has not improved for %d epochs (best %.4g)",
                     self.epoch, key, patience, min(scores))
        return stop

    def _best_key(self) -> str:
        return f"{self.exp.asr_task}/{self.exp.train.best_metric}"

    def _keep_best(self, results: dict) -> None:
        """Keep the N best epoch checkpoints (by the main task's dev metric) for averaging."""
        if not self.rt.main or self.exp.train.average_best <= 0:
            return
        score = results.get(self._best_key(), results.get(f"{self.exp.asr_task}/loss"))
        if score is None:
            return
        best_file = self.exp_dir / "best.json"
        best = json.loads(best_file.read_text()) if best_file.exists() else []
        name = f"epoch{self.epoch}.pt"
        best.append({"file": name, "score": score, "epoch": self.epoch})
        best.sort(key=lambda b: b["score"])
        keep, drop = best[: self.exp.train.average_best], best[self.exp.train.average_best:]
        if any(b["file"] == name for b in keep):
            self.save(name)
        for b in drop:
            (self.exp_dir / b["file"]).unlink(missing_ok=True)
        best_file.write_text(json.dumps(keep, indent=1))

    def _finish(self) -> None:
        """Average the best checkpoints into `final.pt` (or copy `last.pt`)."""
        if not self.rt.main:
            self._barrier()
            return
        best_file = self.exp_dir / "best.json"
        state = self.state_dict()
        if best_file.exists():
            files = [self.exp_dir / b["file"] for b in json.loads(best_file.read_text())]
            files = [f for f in files if f.exists()]
            if files:
                state["model"] = ckpt.average_weights(files)
                state["averaged"] = [f.name for f in files]
        for key in ("optimizer", "scheduler", "sampler", "rng"):
            state.pop(key)  # final.pt is for inference; last.pt stays for resumption
        ckpt.save_atomic(state, self.exp_dir / "final.pt")
        # How the run ended, beside its per-epoch dev curve: a grid is "converged" only if every
        # run stopped on its dev plateau, not because the cap (a time budget) ran out.
        (self.exp_dir / "stopping.json").write_text(json.dumps({
            "stopped_by": self.stopped_by, "epochs": self.epoch, "updates": self.step,
            "cap": {"epochs": self.exp.train.epochs, "updates": self.total_steps},
            "patience": self.exp.train.patience, "metric": f"dev/{self._best_key()}",
            "dev_curve": self.history}, indent=1))
        if self.tb is not None:
            self.tb.close()
            self.step_log.close()
        try:  # a picture of the run; never worth failing a finished training for
            from mtspeech.evaluation.plots import plot_learned, plot_train_log

            plot_train_log(self.exp_dir / "train_log.jsonl", self.exp_dir / "curves.png")
            plot_learned(self.exp_dir / "train_log.jsonl", self.exp_dir / "learned.png")  # if anything was
        except Exception as e:  # noqa: BLE001
            log.warning("could not plot the training curves: %s", e)
        log.info("wrote %s (averaged %s); %d batches skipped", self.exp_dir / "final.pt",
                 state.get("averaged", "none"), self.skipped_batches)
        self._barrier()


def _add(sums: dict, key: str, num: float, den: float) -> None:
    acc = sums.setdefault(key, [0.0, 0.0])
    acc[0] += float(num)
    acc[1] += float(den)


def train(exp: Experiment) -> dict:
    """Train an experiment (resuming if `exp_dir/last.pt` exists); returns final dev results."""
    t0 = time.time()
    trainer = Trainer(exp)
    if trainer.rt.main:
        Path(exp.exp_dir).mkdir(parents=True, exist_ok=True)
        (Path(exp.exp_dir) / "config.json").write_text(json.dumps(experiment_to_dict(exp), indent=1))
    results = trainer.fit()
    if trainer.rt.main:
        log.info("training took %.1f min", (time.time() - t0) / 60)
    return results
