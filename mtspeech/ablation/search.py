"""Tuned baselines: a random search over a few settings, chosen on dev, as one grid variant.

An adaptive loss weighting rarely beats a *tuned* static one (Xin et al. 2022; Kurin et al.
2022), and an auxiliary task's gain may be plain regularisation. Both comparisons need a
baseline that had its own tuning budget: a `searches:` block in a grid names it.

    searches:
      static_tuned:                 # the name the report compares under
        from: all                   # the variant whose settings are searched over
        trials: 4                   # match the compute of the methods it is compared with
        seed: 0                     # the draw of settings (not a training seed)
        space:
          tasks.phones.weight: [log_uniform, 0.1, 3.0]
          tasks.vad.weight: [choice, 0.1, 0.3, 1.0]

Each trial is an ordinary variant `static_tuned.t0`, `.t1`, ... (trained at every grid seed);
the report picks the trial with the best mean over seeds of the main task's dev metric and
shows it as `static_tuned`. The pick reads dev only, so its dev numbers are optimistic by
construction: judge it on the test splits (`--final`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mtspeech.config import ConfigError

KINDS = ("log_uniform", "uniform", "choice")


@dataclass(frozen=True)
class Search:
    name: str
    base: str
    trials: tuple[str, ...]
    settings: dict[str, dict]  # trial → dotted key → value

    def trial_names(self) -> list[str]:
        return list(self.trials)


def _draw(rng: np.random.Generator, spec, where: str):
    if not isinstance(spec, (list, tuple)) or len(spec) < 2 or spec[0] not in KINDS:
        raise ConfigError(f"{where}: expected [log_uniform|uniform, low, high] or [choice, a, b, ...], got {spec!r}")
    kind, *args = spec
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1]:
        raise ConfigError(f"{where}: {kind} needs low < high, got {args}")
    low, high = map(float, args)
    if kind == "log_uniform":
        if low <= 0:
            raise ConfigError(f"{where}: log_uniform needs low > 0, got {low}")
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    return float(f"{value:.3g}")  # three digits: a setting a person can read and retype


def parse_searches(raw: Mapping | None, variants: Mapping[str, Mapping]) -> list[Search]:
    """Each `searches:` entry drawn into its trials (deterministic in its `seed`)."""
    out = []
    for name, spec in (raw or {}).items():
        where = f"searches.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a mapping with from, trials, space")
        unknown = sorted(set(spec) - {"from", "trials", "seed", "space"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; a search has from, trials, seed, space")
        base = spec.get("from")
        if base not in variants:
            raise ConfigError(f"{where}.from: {base!r} is not a variant")
        if name in variants or "/" in name or "." in name:
            raise ConfigError(f"{where}: the name must be new and contain no '/' or '.'")
        trials = spec.get("trials")
        if not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"{where}.trials: a positive integer, got {trials!r}")
        space = spec.get("space")
        if not isinstance(space, Mapping) or not space:
            raise ConfigError(f"{where}.space: expected dotted key → [kind, ...]")
        rng = np.random.default_rng(int(spec.get("seed", 0)))
        settings = {f"{name}.t{i}": {key: _draw(rng, rule, f"{where}.space.{key}") for key, rule in space.items()}
                    for i in range(trials)}
        out.append(Search(name, base, tuple(settings), settings))
    return out


def choose(search: Search, table: Mapping[str, Mapping[str, Mapping]], metric: str,
           lower_is_better: bool = True) -> dict:
    """The trial with the best mean `metric` over seeds in one dev split's `table`; trials
    missing a seed the others have are left out (a partial trial would win on fewer draws)."""
    scores = {t: table[t][metric] for t in search.trials if metric in table.get(t, {})}
    if not scores:
        return {"chosen": None, "metric": metric, "trials": {}}
    most = max(s["n"] for s in scores.values())
    eligible = {t: s["mean"] for t, s in scores.items() if s["n"] == most}
    pick = (min if lower_is_better else max)(eligible, key=eligible.get)
    return {"chosen": pick, "metric": metric, "seeds": most,
            "trials": {t: {"settings": search.settings[t], "dev_mean": scores[t]["mean"], "n": scores[t]["n"]}
                       for t in search.trials if t in scores}}
