"""Auxiliary-task ablations: a grid of variants × seeds, trained, evaluated and compared.

    mtspeech ablate --grid recipes/synthetic/ablation.yaml [--out DIR] [--jobs N] [--seeds 0 1 2]

A grid (YAML, see recipes/synthetic/ablation.yaml and docs/ablation.md) names a base
`recipe`, `shared` overrides for every run (e.g. a shorter schedule), `variants` (each a
small override: dotted keys `tasks.speaker.adversarial: true` and/or nested mappings merged
with `mtspeech.config.merge`, where `null` removes a key, e.g. a task), `seeds`, the
`baseline` variant, the `test` manifests to evaluate on and `evaluate` options.

Every run lives in `OUT/runs/<variant>/seed<k>/`: `run.json` (what to run: resolved config,
test manifests, evaluation options), `config.yaml` (the same config for `mtspeech train`),
the trainer's outputs and `eval/<split>/results.json`. A run is done when every split's
results exist; re-running the grid skips done runs, evaluates trained ones (`final.pt`) and
resumes half-trained ones from their `last.pt`, so an interrupted grid just continues.

Runs execute in parallel as `--jobs` subprocesses (`python -m mtspeech.ablation --run DIR`),
each with `train.threads = cores // jobs`. On SLURM, `--launcher slurm` submits one job per
run and waits for them (`mtspeech.ablation.slurm`); elsewhere launch each run with torchrun
(`--print-commands` lists them), then run the grid once more to evaluate and report.

The report (`OUT/report.md`, `OUT/results.json`, `OUT/plots/*.png` + JSON sidecars): every
metric as mean ± std over seeds with a 95% t interval, and every variant against the
baseline (seed k paired with seed k): the per-seed Δ, a seed-aware interval (two-level
bootstrap over training seeds and utterances), raw and Holm/BH-adjusted p over the report's
declared family, and a verdict at the adjusted level (none below 3 seeds); the utterance-only
interval beside it. Runs that logged task relatedness (`train.relatedness_every`) add a table
of it beside each variant's effect on ASR, and its curves (`relatedness_report`).
`--report-only --from-results FILE` re-reports a committed grid whose runs are gone.

Modules: `grid` (parse, validate, plan), `runner` (local processes, the worker), `slurm`
(submitit), `verdicts` (comparisons, family, verdicts), `report`, `render`, `cli`.
"""

from mtspeech.ablation.grid import Grid, Run, load_grid, nest, plan_runs, run_config
from mtspeech.ablation.render import render_report
from mtspeech.ablation.report import build_report, paired_seed_bootstrap, reaggregate
from mtspeech.ablation.runner import run_grid, run_one, worker_command

__all__ = ["Grid", "Run", "build_report", "load_grid", "nest", "paired_seed_bootstrap", "plan_runs", "reaggregate",
           "render_report", "run_config", "run_grid", "run_one", "worker_command"]
