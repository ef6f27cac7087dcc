"""How per-task losses become one update: static, uncertainty, DWA, PCGrad and GradNorm behind one interface.

Every strategy is a `LossWeighting` (an `nn.Module`, so it can own learned parameters and
its state travels in `state_dict()` for exact resume):

    combine(losses, step) -> total          losses: {task name: scalar tensor}
    backward(losses, shared_params, step)   default: combine(...).backward(); returns total (detached)
    weights() -> {task: effective weight}   for logging
    sync_grads(model_params)                once per optimizer step: finish and (DDP) average grads
    syncs_model_grads: bool                 True: the trainer must run every micro-batch under
                                            `ddp.no_sync()`; `sync_grads` averages the model's grads
    zero_grad()                             drops accumulated gradients (also call it whenever the
                                            trainer discards an accumulation window)

A task missing from `losses` contributes nothing this step. The trainer should leave out a
task whose batch has no present label (`not targets.present.any()`): its zero loss would
otherwise pull the uncertainty term `s_k` down and dilute DWA's loss averages.

The configured task weights (`weight:` in each task block) are the static weights; the
adaptive strategies start from them (uncertainty: `s_k = -log w_k`) or scale by them (DWA,
PCGrad; GradNorm aims the tasks' gradient norms at their ratio), so `weight: 1.0` everywhere
gives the method as published.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from mtspeech.weighting.base import (
    DWAWeighting,
    LossWeighting,
    StaticWeighting,
    UncertaintyWeighting,
    WeightingConfig,
)
from mtspeech.weighting.gradnorm import GradNormWeighting
from mtspeech.weighting.pcgrad import PCGradWeighting, pcgrad_project

__all__ = ["WEIGHTINGS", "DWAWeighting", "GradNormWeighting", "LossWeighting", "PCGradWeighting",
           "StaticWeighting", "UncertaintyWeighting", "WeightingConfig", "build_weighting", "pcgrad_project"]


WEIGHTINGS: dict[str, type] = {
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DWAWeighting,
    "pcgrad": PCGradWeighting,
    "gradnorm": GradNormWeighting,
}


def build_weighting(
    cfg: WeightingConfig | Mapping[str, Any] | None,
    task_names: Iterable[str],
    static_weights: Mapping[str, float],
) -> LossWeighting:
    """Build the configured strategy (None → static). A dict is validated as `weighting`."""
    if cfg is None:
        cfg = WeightingConfig()
    elif isinstance(cfg, Mapping):
        from mtspeech.config import from_dict

        cfg = from_dict(WeightingConfig, dict(cfg), "weighting")
    if cfg.kind not in WEIGHTINGS:
        raise ValueError(f"weighting.kind: {cfg.kind!r} is not one of {sorted(WEIGHTINGS)}")
    names = list(task_names)
    if cfg.kind == "dwa":
        return DWAWeighting(names, static_weights, cfg.temperature, cfg.window_steps)
    if cfg.kind == "pcgrad":
        return PCGradWeighting(names, static_weights, cfg.seed)
    if cfg.kind == "gradnorm":
        return GradNormWeighting(names, static_weights, cfg.alpha, cfg.lr)
    return WEIGHTINGS[cfg.kind](names, static_weights)
