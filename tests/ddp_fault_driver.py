"""Run by torchrun in tests/test_train_ddp.py: train a config with one fault injected on one
rank, and record how many batches each rank consumed per epoch.

    torchrun --nproc_per_node 2 tests/ddp_fault_driver.py CONFIG.yaml FAULT AT_BATCH RECORD.jsonl [CRASH_AT_STEP]

FAULT: `nan` (rank 1's ASR loss is NaN), `nolabels` (rank 1's batch has no label for any
task), `unreadable` (rank 1's batch is None: all its audio unreadable), `none`. AT_BATCH
counts rank 1's batches from 1 over the whole run. CRASH_AT_STEP: every rank raises right
after the checkpoint of that optimizer step (a kill mid-epoch), exit status 3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys

import torch
import yaml
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from mtspeech.experiment import experiment_from_dict
from mtspeech.model import MultiTaskModel
from mtspeech.train import Trainer

config, fault, at_batch, record = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
crash_at = int(sys.argv[5]) if len(sys.argv) > 5 else None
rank = int(os.environ["RANK"])
seen = {"batches": 0}
forward = MultiTaskModel.forward


def faulty_loader(original):
    def loader(self, utts, sampler, train):
        inner = original(self, utts, sampler, train)
        if not train:
            return inner

        def batches():
            for batch in inner:
                with open(record, "a") as f:
                    f.write(json.dumps({"rank": rank, "epoch": self.epoch}) + "\n")
                seen["batches"] += 1
                if rank == 1 and seen["batches"] == at_batch and batch is not None:
                    if fault == "unreadable":
                        batch = None
                    elif fault == "nolabels":
                        targets = {k: dataclasses.replace(t, present=torch.zeros_like(t.present))
                                   for k, t in batch.targets.items()}
                        batch = dataclasses.replace(batch, targets=targets)
                    elif fault == "nan":
                        seen["nan_next"] = True
                yield batch
        return batches()
    return loader


def nan_forward(self, *args, **kwargs):
    losses, logits, lens = forward(self, *args, **kwargs)
    if seen.pop("nan_next", False):
        losses = dict(losses, asr=losses["asr"] * float("nan"))
    return losses, logits, lens


class Crash(Exception):
    pass


def crashing_save(original):
    def save(self, name):
        out = original(self, name)
        if crash_at is not None and name == "last.pt" and self.step == crash_at:
            raise Crash(f"crash after the checkpoint of step {self.step}")
        return out
    return save


def logged_collectives(original_init):
    """Record every collective this rank calls: the trainer's own all-reduces and each DDP
    gradient bucket (through a comm hook), with where in the run it happened. In step, both
    ranks record the same sequence; a rank that skipped alone shifts its sequence, which can
    otherwise pass unnoticed (gloo pairs unrelated collectives of equal size)."""
    def note(trainer, what):
        with open(record, "a") as f:
            f.write(json.dumps({"rank": rank, "collective": [trainer.epoch, trainer.batches_done, what]}) + "\n")

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if self.ddp is not None:
            def hook(state, bucket):
                note(self, f"grad bucket {bucket.index()}")
                return allreduce_hook(None, bucket)
            self.ddp.register_comm_hook(None, hook)
        all_reduce = torch.distributed.all_reduce

        def logged_all_reduce(tensor, *a, **kw):
            note(self, f"all_reduce {tuple(tensor.shape)}")
            return all_reduce(tensor, *a, **kw)
        torch.distributed.all_reduce = logged_all_reduce
    return init


Trainer.__init__ = logged_collectives(Trainer.__init__)
Trainer._loader = faulty_loader(Trainer._loader)
Trainer.save = crashing_save(Trainer.save)
MultiTaskModel.forward = nan_forward
try:
    trainer = Trainer(experiment_from_dict(yaml.safe_load(open(config))))
    trainer.fit()
except Crash as e:
    print(e, file=sys.stderr)
    sys.exit(3)
# DDP ranks must end bit-identical: a rank that skipped alone desyncs the collectives, which
# either hangs or silently mixes unrelated tensors into the gradients.
params = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
with open(record, "a") as f:
    f.write(json.dumps({"rank": rank, "final_step": trainer.step,
                        "params_sha": hashlib.sha256(params.numpy().tobytes()).hexdigest()}) + "\n")
