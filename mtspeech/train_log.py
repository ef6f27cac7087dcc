"""A training run's two logs, written by rank 0 only: TensorBoard scalars (`exp_dir/tb`) and
one JSON record per line (`exp_dir/train_log.jsonl`, what the plots and reports read)."""

from __future__ import annotations

import json
from pathlib import Path


def step_record(lr: float, losses: dict, weights: dict, model) -> dict:
    """What a logged training step records besides its step and epoch: the learning rate, each
    task's loss and weight, CTC tasks' too-short counts, learned layer mixes, cross-stitch alphas."""
    from mtspeech.encoders.towers import cross_stitch_alphas
    from mtspeech.tasks.layer_mix import layer_weights

    return {"lr": lr, **{f"loss/{k}": v.item() for k, v in losses.items()},
            **{f"weight/{k}": float(w) for k, w in weights.items()},
            **{f"too_short/{k}": t.too_short for k, t in model.tasks.items() if getattr(t, "too_short", 0)},
            **{f"layer_weight/{t}/{k}": w for t, ws in layer_weights(model.tasks).items() for k, w in enumerate(ws)},
            **cross_stitch_alphas(model.encoder)}


class TrainLog:
    """Both logs of one run, appended to on resume (TensorBoard purges events past `step`)."""

    def __init__(self, exp_dir: Path, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        exp_dir = Path(exp_dir)
        exp_dir.mkdir(parents=True, exist_ok=True)
        self.tb = SummaryWriter(str(exp_dir / "tb"), purge_step=resume_step or None)
        self.jsonl = open(exp_dir / "train_log.jsonl", "a")

    def write(self, step: int, epoch: int, values: dict) -> None:
        """One record `{step, epoch, **values}`; every value also as a TensorBoard scalar."""
        for key, value in values.items():
            self.tb.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        self.tb.close()
        self.jsonl.close()
