"""An ablation grid: parse and validate the YAML, resolve each run's config, plan the run folders.

Every run lives in `OUT/runs/<variant>/seed<k>/`: `run.json` (what to run: resolved config,
test manifests, evaluation options), `config.yaml` (the same config for `mtspeech train`),
the trainer's outputs and `eval/<split>/results.json`. See `mtspeech.ablation` for the whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtspeech.ablation.search import parse_searches
from mtspeech.config import ConfigError, load_yaml, merge
from mtspeech.data.final_test import FINAL_SPLIT

_GRID_KEYS = {"recipe", "out", "seeds", "baseline", "dev", "test", "shared", "evaluate", "variants", "select",
              "searches"}


# =========================================================================== the grid
@dataclass(frozen=True)
class Grid:
    """A resolved ablation grid.

    recipe: the base experiment as a plain dict (its `base:` chain already merged);
    shared / variants[name]: nested override dicts (`None` deletes a key);
    test: split name → manifest path; evaluate: `DecodingConfig` fields and keyword options of `evaluate.evaluate`.
    """

    recipe: dict
    variants: dict[str, dict]
    seeds: tuple[int, ...]
    baseline: str
    test: dict[str, str]
    shared: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    out: str | None = None
    dev: dict[str, str] = field(default_factory=dict)
    final: bool = False
    searches: tuple = ()  # search.Search: tuned baselines, their trials among `variants`

    @property
    def splits(self) -> dict[str, str]:
        """What the runs are scored on: the `dev` splits, which every decision reads, and the
        `test` splits only for the final scoring (`final`, `mtspeech ablate --final`)."""
        return {**self.dev, **(self.test if self.final else {})}

    def role(self, split: str) -> str:
        return "dev" if split in self.dev else "test"


def nest(overrides: Mapping | None, where: str = "") -> dict:
    """Turn dotted keys into nested mappings: {"a.b": 1, "c": {"d.e": 2}} → {"a": {"b": 1}, "c": {"d": {"e": 2}}}.

    Keys are merged in order, so dotted and nested forms can be mixed in one override.
    """
    out: dict = {}
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where or 'override'}: keys must be non-empty strings, got {key!r}")
        if isinstance(value, Mapping):
            value = nest(value, f"{where}.{key}" if where else key)
        for part in reversed(key.split(".")):
            value = {part: value}
        out = _merge_keep_none(out, value)
    return out


def _merge_keep_none(base: Mapping, update: Mapping) -> dict:
    """Like `config.merge`, but keeps `None` values (they delete keys later, in the recipe)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge_keep_none(out[key], value)
        else:
            out[key] = value
    return out


def load_grid(source: str | Path | Mapping, seeds: list[int] | None = None,
              variants: list[str] | None = None, final: bool = False) -> Grid:
    """Read a grid YAML (or dict). `seeds` / `variants` override the file's seeds and selection;
    `final` also scores the test splits (`mtspeech ablate --final`).

    A relative `recipe` is resolved against the grid file's folder; `dev` / `test` manifests and
    the recipe's data paths are relative to the working directory, as in every recipe. `dev`
    (split name → manifest) defaults to the recipe's `data.dev`: grids select on it, and read
    `test` only when scored with `--final`.
    """
    if isinstance(source, Mapping):
        raw, folder = dict(source), Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"grid file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        folder = path.parent
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a grid is a mapping")
    unknown = sorted(set(raw) - _GRID_KEYS)
    if unknown:
        raise ConfigError(f"unknown grid key(s) {unknown}; a grid has {sorted(_GRID_KEYS)}")
    for key in ("recipe", "variants", "test"):
        if key not in raw:
            raise ConfigError(f"grid: missing key {key!r}")
    recipe = raw["recipe"]
    if isinstance(recipe, Mapping):
        recipe = dict(recipe)
    else:
        recipe_path = Path(recipe)
        recipe = load_yaml(recipe_path if recipe_path.is_absolute() else folder / recipe_path)
    all_variants = raw["variants"]
    if not isinstance(all_variants, Mapping) or not all_variants:
        raise ConfigError("grid.variants: expected a non-empty mapping name → overrides")
    searches = parse_searches(raw.get("searches"), all_variants)
    wanted = list(variants or raw.get("select") or [*all_variants, *(s.name for s in searches)])
    baseline = raw.get("baseline", wanted[0])
    if baseline not in wanted:
        wanted.insert(0, baseline)  # every comparison needs it
    searches = [s for s in searches if s.name in wanted]  # a search runs when its name is chosen
    all_variants = {**all_variants, **{t: _merge_keep_none(nest(all_variants[s.base], s.base), nest(s.settings[t], t))
                                       for s in searches for t in s.trials}}
    chosen = [t for v in wanted for t in (next((s.trials for s in searches if s.name == v), None) or [v])]
    missing = [v for v in chosen if v not in all_variants]
    if missing:
        raise ConfigError(f"variant(s) {missing} are not in the grid; it has {list(all_variants)}")
    if baseline not in all_variants and baseline not in {s.name for s in searches}:
        raise ConfigError(f"grid.baseline: {baseline!r} is not a variant")
    for name in chosen:
        if "/" in name or name in (".", ".."):
            raise ConfigError(f"variant name {name!r} cannot be a folder name")
    test = raw["test"]
    if isinstance(test, str):
        test = {Path(test).stem: test}
    if not isinstance(test, Mapping) or not test:
        raise ConfigError("grid.test: expected split name → manifest path")
    shared = nest(raw.get("shared"), "shared")
    dev = raw.get("dev") or {}
    if isinstance(dev, str):
        dev = {Path(dev).stem: dev}
    if not dev:
        recipe_dev = merge(recipe, shared).get("data", {}).get("dev")
        if not recipe_dev:
            raise ConfigError("grid: no dev split to select on; set `dev:` or the recipe's data.dev")
        dev = {"dev": recipe_dev}
    if not isinstance(dev, Mapping):
        raise ConfigError("grid.dev: expected split name → manifest path")
    final_test = sorted(str(k) for k, v in dev.items() if _is_final_test(str(k)) or _is_final_test(Path(str(v)).stem))
    if final_test:
        raise ConfigError(f"grid.dev: {final_test} is the final test set ({FINAL_SPLIT}, docs/data.md): it never "
                          "selects; list it under `test:` and score it once with --final")
    clash = sorted(set(map(str, dev)) & set(map(str, test)))
    same = sorted(str(v) for v in dev.values() if str(v) in set(map(str, test.values())))
    if clash or same:
        raise ConfigError(f"grid: split(s) {clash or same} are both dev and test; a test split never selects")
    seeds_ = tuple(int(s) for s in (seeds if seeds else raw.get("seeds", [0])))
    if not seeds_:
        raise ConfigError("grid.seeds: at least one seed")
    return Grid(
        recipe=recipe,
        variants={v: nest(all_variants[v], v) for v in chosen},
        seeds=seeds_,
        baseline=baseline,
        test={str(k): str(v) for k, v in test.items()},
        dev={str(k): str(v) for k, v in dev.items()},
        shared=shared,
        evaluate=dict(raw.get("evaluate") or {}),
        out=raw.get("out"),
        final=final,
        searches=tuple(searches),
    )


def _is_final_test(name: str) -> bool:
    """True for the final test set and its twins (`test-final`, `test-final-snr10`, ...)."""
    return name == FINAL_SPLIT or name.startswith(f"{FINAL_SPLIT}-")


def run_config(grid: Grid, variant: str, seed: int, run_dir: Path) -> dict:
    """The resolved experiment dict of one run: recipe ← shared ← variant ← seed and exp_dir."""
    from mtspeech.experiment import experiment_from_dict, experiment_to_dict

    data = merge(merge(grid.recipe, grid.shared), grid.variants[variant])
    data = merge(data, {"exp_dir": str(run_dir), "train": {"seed": seed}})
    try:  # validate now and store the fully resolved config (defaults filled in)
        return experiment_to_dict(experiment_from_dict(data))
    except ConfigError as e:
        raise ConfigError(f"variant {variant!r}: {e}") from None


# =========================================================================== runs
@dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    def results_path(self, split: str) -> Path:
        return self.dir / "eval" / split / "results.json"

    def done(self, splits) -> bool:
        return all(self.results_path(s).is_file() for s in splits)

    def state(self, splits) -> str:
        """done | evaluate (trained) | resume (last.pt) | train (nothing yet)."""
        if self.done(splits):
            return "done"
        if (self.dir / "final.pt").is_file():
            return "evaluate"
        if (self.dir / "last.pt").is_file():
            return "resume"
        return "train"


def plan_runs(grid: Grid, out: Path) -> list[Run]:
    """Write each run's `run.json` + `config.yaml` (checking an existing run was planned the
    same way) and return the runs, seed-major so a partial grid covers every variant early."""
    runs = []
    for seed in grid.seeds:
        for variant in grid.variants:
            run = Run(variant, seed, out / "runs" / variant / f"seed{seed}")
            spec = {"variant": variant, "seed": seed, "config": run_config(grid, variant, seed, run.dir),
                    "splits": grid.splits, "final": grid.final, "evaluate": grid.evaluate}
            spec_path = run.dir / "run.json"
            if spec_path.is_file():
                old = json.loads(spec_path.read_text())
                # exp_dir is where the run lies: a grid folder that moved (or a run copied in
                # from another grid with the identical config) keeps its runs, re-pointed here.
                # The old config is resolved again, so a setting added since with its default
                # (which trains the same model) does not orphan the run.
                stored = _resolved(old["config"])
                if {**stored, "exp_dir": None} != {**spec["config"], "exp_dir": None}:
                    diff = _diff(stored, spec["config"])
                    raise ConfigError(
                        f"run {run.name} in {out} was started with another config (differs at {diff}); "
                        f"delete {run.dir} to retrain it or use another --out")
            run.dir.mkdir(parents=True, exist_ok=True)
            spec_path.write_text(json.dumps(spec, indent=1))
            (run.dir / "config.yaml").write_text(yaml.safe_dump(spec["config"], sort_keys=False))
            runs.append(run)
    return runs


def _resolved(config: dict) -> dict:
    """A stored run config with every setting added since at its default (as stored when the
    config no longer parses, so the difference is reported)."""
    from mtspeech.experiment import experiment_from_dict, experiment_to_dict

    try:
        return experiment_to_dict(experiment_from_dict(config))
    except (ConfigError, ValueError, TypeError):
        return config


def _diff(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _diff(a.get(k), b.get(k), f"{where}.{k}" if where else k)
    return where or "<root>"
