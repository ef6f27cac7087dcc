"""The one training loop for every recipe: single process (CPU/GPU) or DDP via torchrun.

    mtspeech train --config recipes/synthetic/conformer.yaml [--set optim.lr=1e-3 ...]
    torchrun --nproc_per_node 4 -m mtspeech.cli train --config ...

Resumption is exact: the checkpoint carries model, optimizer, scheduler, loss weighting,
sampler position and RNG states, and training restarts from `exp_dir/last.pt` on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mtspeech import checkpoint as ckpt
from mtspeech.branching import AffinityBranching
from mtspeech.data.features import cmvn_from_utterances
from mtspeech.data.dataset import training_loader
from mtspeech.data.manifest import read_manifest, read_manifests, within_duration
from mtspeech.data.sampler import DurationBatchSampler
from mtspeech.experiment import Experiment, build_model, experiment_to_dict, fit_labels
from mtspeech.relatedness import RelatednessProbe
from mtspeech.runtime import Runtime, autocast, resolve_amp, setup_runtime
from mtspeech.stopping import BestCheckpoints, plateaued, write_stopping_record
from mtspeech.train_log import TrainLog, step_record
from mtspeech.optim import build_optimizer, build_scheduler, rebuild_after_split
from mtspeech.tasks.scoring import add_batch, finish, gather_over_ranks, task_scorers
from mtspeech.weighting import build_weighting

log = logging.getLogger(__name__)


class Trainer:
    """Owns model, optimizer, scheduler, weighting, sampler and their checkpointing."""

    def __init__(self, exp: Experiment, runtime: Runtime | None = None):
        self.exp = exp
        self.rt = runtime or setup_runtime(exp.train.device)
        self.exp_dir = Path(exp.exp_dir)
        if exp.train.threads:
            torch.set_num_threads(exp.train.threads)
        torch.manual_seed(exp.train.seed)

        self.train_utts = within_duration(read_manifests(exp.data.train), exp.data.max_utterance_seconds)
        if not self.train_utts:
            raise ValueError(f"training manifest {exp.data.train} holds no usable utterance")
        self.dev_utts = read_manifest(exp.data.dev) if exp.data.dev else []

        self.labels = self._labels()
        self.model = build_model(exp, self.labels).to(self.rt.device)
        branching = getattr(exp.encoder.cfg, "branching", None)  # towers chosen in training (branching.py)
        self.branching = AffinityBranching(branching, self.model) if branching is not None else None
        self.task_names = list(exp.tasks)
        self.weighting = build_weighting(exp.weighting, self.task_names, {n: c.weight for n, c in exp.tasks.items()})
        self.weighting.to(self.rt.device)
        o = exp.optim
        self.optimizer = build_optimizer(self.model, self.weighting, o, self.rt.device)
        self.amp = resolve_amp(self.rt.device, exp.train.amp)
        # fp16 needs loss scaling (its gradients underflow); bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.amp == "fp16")

        self.sampler = DurationBatchSampler(
            [u.duration for u in self.train_utts], exp.data.max_batch_seconds, shuffle=True,
            seed=exp.train.seed, rank=self.rt.rank, world_size=self.rt.world_size,
            sorted_epochs=exp.data.sorted_epochs,
        )
        steps_per_epoch = math.ceil(len(self.sampler) / o.accum_steps)
        self.total_steps = exp.train.max_steps or steps_per_epoch * exp.train.epochs
        self.scheduler = build_scheduler(self.optimizer, o, self.total_steps)
        if branching is not None and branching.warmup_steps >= self.total_steps:
            log.warning("encoder.branching.warmup_steps=%d is not below the run's %d steps: it will never split",
                        branching.warmup_steps, self.total_steps)
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
        self._wrap()
        self._related_step: int | None = None  # the step last measured (a skipped batch must not repeat it)
        self.run_log = TrainLog(self.exp_dir, resume_step=self.step) if self.rt.main else None
        self.best = BestCheckpoints(self.exp_dir, exp.train.average_best)

    # ----------------------------------------------------------------- set-up
    def _wrap(self) -> None:
        """DDP wrapper and relatedness probe of the model as it is now (again after a split)."""
        self.ddp = None
        if self.rt.world_size > 1:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.rt.device.index] if self.rt.device.type == "cuda" else None
            )
        warming = self.branching is not None and self.branching.record is None  # it reads pair cosines
        self.relatedness = (RelatednessProbe(self.model, self.exp.train.relatedness_lookahead_lr, pairs=warming)
                            if self.exp.train.relatedness_every or warming else None)

    def _labels(self) -> dict:
        """Fit label spaces on rank 0 (tokenizer training etc.), share through exp_dir."""
        path = self.exp_dir / "labels.json"
        if self.rt.main and not path.exists():
            labels = fit_labels(self.exp, self.train_utts)
            path.write_text(json.dumps(labels, indent=1))
        self.rt.barrier()
        return json.loads(path.read_text())

    def _fit_cmvn(self) -> None:
        """Global mean/variance of log-mel over a seeded sample of training utterances; every
        rank must normalise identically, so rank 0's statistics are broadcast."""
        mean, std = cmvn_from_utterances(self.train_utts, self.model.fbank,
                                         self.exp.data.cmvn_utterances, seed=self.exp.train.seed)
        self.model.cmvn.set_stats(mean, std)
        if self.rt.world_size > 1:
            for buf in (self.model.cmvn.mean, self.model.cmvn.std):
                dist.broadcast(buf, 0)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        exp = self.exp
        if self.model.encoder.cfg is not exp.encoder.cfg:  # branching split it: the config names the towers
            exp = dataclasses.replace(exp, encoder=dataclasses.replace(exp.encoder, cfg=self.model.encoder.cfg))
        return {
            "config": experiment_to_dict(exp),
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
        } | ({"branching": self.branching.state_dict()} if self.branching is not None else {})

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
        if ("branching" in state) != (self.branching is not None):
            raise ckpt.CheckpointError(f"{path} was trained {'with' if 'branching' in state else 'without'} "
                                       "encoder.branching and this config says otherwise: resume with the run's config")
        if self.branching is not None:  # split as the run did before loading the split weights
            self.branching.load_state_dict(state["branching"])
            if self.branching.split(self.model):
                self._rebuild_optimizer({})  # its state comes from the checkpoint just below
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.weighting.load_state_dict(state["weighting"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.epoch, self.history = state["step"], state["epoch"], state["history"]
        self.batches_done = state["sampler"]["position"]
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(ckpt.rng_state_of_rank(state["rng"], self.rt.rank, self.rt.world_size))
        log.info("resumed from %s at epoch %d step %d", path, self.epoch, self.step)
        return True

    # ---------------------------------------------------------------- training
    def _loader(self, utts, sampler, train: bool):
        return training_loader(utts, self.model.tasks, sampler, self.exp.data, seed=self.exp.train.seed,
                               epoch=self.epoch, train=train, sample_rate=self.model.geometry.sample_rate,
                               pin_memory=self.rt.device.type == "cuda")

    def fit(self) -> dict:
        """Train to the configured length; returns the last dev results."""
        exp = self.exp
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
                (readable,) = self.rt.agree(batch is not None)
                if not readable:  # some rank's batch was entirely unreadable audio
                    continue
                batch = batch.to(self.rt.device)
                if accum == 0 and self.relatedness is not None:
                    self._measure_relatedness(batch)
                sync = accum + 1 == exp.optim.accum_steps or last_of_epoch
                no_sync = self.ddp is not None and (not sync or self.weighting.syncs_model_grads)
                with self.ddp.no_sync() if no_sync else contextlib.nullcontext(), \
                        autocast(self.rt.device, self.amp):
                    losses, _, _ = (self.ddp or self.model)(batch.wav, batch.wav_lens, batch.targets)
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
                any_labels, finite = self.rt.agree(bool(losses), finite)
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
                    if self.branching is not None and self.branching.due(self.step):
                        self._branch()
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
        record = step_record(self.scheduler.get_last_lr()[0], losses, self.weighting.weights(), self.model)
        self.run_log.write(self.step, self.epoch, record)
        bar.set_postfix({k.split("/")[1]: f"{v:.3g}" for k, v in record.items() if k.startswith("loss/")})

    def _measure_relatedness(self, batch) -> None:
        """Task relatedness (mtspeech/relatedness.py) on a step's first batch, every
        `relatedness_every` steps and when branching's warm-up asks, before the step trains on it
        (which it leaves unchanged)."""
        every = self.exp.train.relatedness_every
        branching = self.branching is not None and self.branching.wants_measurement(self.step)
        if not (branching or every and self.step % every == 0) or self.step == self._related_step:
            return
        self._related_step = self.step
        values = self.relatedness.measure(batch.wav, batch.wav_lens, batch.targets,
                                          autocast=lambda: autocast(self.rt.device, self.amp))
        values = self.relatedness.average_over_ranks(values, self.rt.device)  # all ranks call it alike
        if branching:
            self.branching.add(self.step, values)
        if self.run_log is not None:
            self.run_log.write(self.step, self.epoch, values)

    def _branch(self) -> None:
        """End of branching's warm-up: decide, record, and split the encoder (branching.py).
        The measurements are the same on every rank, so every rank splits alike."""
        record = self.branching.decide(self.step)
        if self.rt.main:
            self.branching.write(self.exp_dir)
            self.run_log.write(self.step, self.epoch, {"branching/split_layers": record["split_layers"],
                                                       "branching/groups": len(record["groups"])})
        sources = self.branching.split(self.model)
        if sources:
            self._rebuild_optimizer(sources)
            if self.rt.main:
                self.best.clear()  # the unsplit epochs' weights do not fit the split model
        self._wrap()

    def _rebuild_optimizer(self, sources: dict) -> None:
        """Optimizer and schedule over the split model (`optim.rebuild_after_split`)."""
        self.optimizer, self.scheduler = rebuild_after_split(
            self.model, self.weighting, self.exp.optim, self.rt.device, self.optimizer, self.scheduler,
            self.total_steps, sources)

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
        if self.run_log is not None:
            self.run_log.write(self.step, self.epoch + 1, {f"dev/{k}": v for k, v in results.items()})
        return results

    def _plateaued(self, quiet: bool = False) -> bool:
        """Early stop on the main task's dev plateau (`stopping.plateaued`). Dev results are
        summed over ranks, so every rank agrees; the history is in `last.pt`, so a resumed run
        that had stopped stays stopped."""
        patience, key = self.exp.train.patience, self._best_key()
        scores = [h[key] for h in self.history if key in h]
        stop = plateaued(scores, patience)
        if stop and self.rt.main and not quiet:
            log.info("early stop after epoch %d: dev %s has not improved for %d epochs (best %.4g)",
                     self.epoch, key, patience, min(scores))
        return stop

    def _best_key(self) -> str:
        return f"{self.exp.asr_task}/{self.exp.train.best_metric}"

    def _keep_best(self, results: dict) -> None:
        """Keep the N best epoch checkpoints (by the main task's dev metric) for averaging."""
        score = results.get(self._best_key(), results.get(f"{self.exp.asr_task}/loss"))
        if self.rt.main and score is not None:
            self.best.offer(self.epoch, score, self.save)

    def _finish(self) -> None:
        """Average the best checkpoints into `final.pt` (or copy `last.pt`)."""
        if not self.rt.main:
            self.rt.barrier()
            return
        state = self.state_dict()
        files = self.best.files()
        if files:
            state["model"] = ckpt.average_weights(files)
            state["averaged"] = [f.name for f in files]
        for key in ("optimizer", "scheduler", "sampler", "rng"):
            state.pop(key)  # final.pt is for inference; last.pt stays for resumption
        ckpt.save_atomic(state, self.exp_dir / "final.pt")
        write_stopping_record(self.exp_dir, stopped_by=self.stopped_by, epochs=self.epoch, updates=self.step,
                              cap_epochs=self.exp.train.epochs, cap_updates=self.total_steps,
                              patience=self.exp.train.patience, metric=f"dev/{self._best_key()}",
                              dev_curve=self.history)
        if self.run_log is not None:
            self.run_log.close()
        try:  # a picture of the run; never worth failing a finished training for
            from mtspeech.evaluation.plots import plot_learned, plot_train_log

            plot_train_log(self.exp_dir / "train_log.jsonl", self.exp_dir / "curves.png")
            plot_learned(self.exp_dir / "train_log.jsonl", self.exp_dir / "learned.png")  # if anything was
        except Exception as e:  # noqa: BLE001
            log.warning("could not plot the training curves: %s", e)
        log.info("wrote %s (averaged %s); %d batches skipped", self.exp_dir / "final.pt",
                 state.get("averaged", "none"), self.skipped_batches)
        self.rt.barrier()


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
