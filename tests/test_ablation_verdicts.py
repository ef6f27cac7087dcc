"""Ablation verdicts: seed-aware intervals in the report, the declared family, and the
re-aggregation of a committed results.json whose runs are gone."""

import json

import numpy as np
import pytest

from mtspeech.ablation.verdicts import adjust_family, compare_split
from tiny_experiment import tiny_experiment


def _summary(values, seeds):
    return {"values": values, "seeds": seeds, "mean": float(np.mean(values))}


def test_compare_split_pairs_seeds_by_number_not_by_position():
    table = {"base": {"asr/cer": _summary([0.30, 0.40, 0.50], [0, 1, 2])},
             "v": {"asr/cer": _summary([0.45, 0.25], [2, 0])}}  # seed 1 missing, listed out of order
    c = compare_split(table, "base")["v"]["asr/cer"]
    assert c["per_seed"] == {"0": pytest.approx(-0.05), "2": pytest.approx(-0.05)}
    assert c["n_seeds"] == 2 and c["level"] == "seeds"


def test_family_adjusts_every_comparison_and_gives_verdicts():
    table = {"base": {"asr/cer": _summary([0.30, 0.31, 0.29], [0, 1, 2]),
                      "vad/f1": _summary([0.90, 0.91, 0.92], [0, 1, 2])},
             "agree": {"asr/cer": _summary([0.20, 0.21, 0.19], [0, 1, 2]),
                       "vad/f1": _summary([0.80, 0.80, 0.81], [0, 1, 2])},
             "disagree": {"asr/cer": _summary([0.05, 0.45, 0.20], [0, 1, 2])},
             "two": {"asr/cer": _summary([0.10, 0.11], [0, 1])}}
    splits = {"test": compare_split(table, "base")}
    fam = adjust_family(splits)
    assert fam["size"] == 3 and fam["method"] == "holm"  # "two" has 2 seeds: not in the family
    assert "test | two | asr/cer" not in fam["members"]
    got = {(v, m): c["verdict"] for v, row in splits["test"].items() for m, c in row.items()}
    assert got[("agree", "asr/cer")] == "better"
    assert got[("agree", "vad/f1")] == "worse"  # F1 is higher-is-better
    assert got[("disagree", "asr/cer")] == "no detectable effect at 3 seeds"
    assert got[("two", "asr/cer")] == "no verdict (2 seeds < 3)"
    raw = splits["test"]["agree"]["asr/cer"]
    assert raw["p_adjusted"] >= raw["p_value"]


def test_difference_intervals_of_rates_stay_inside_their_range():
    table = {"base": {"asr/cer": _summary([0.02, 0.97, 0.03], [0, 1, 2])},
             "v": {"asr/cer": _summary([0.98, 0.01, 0.97], [0, 1, 2])}}
    c = compare_split(table, "base")["v"]["asr/cer"]
    assert -1.0 <= c["ci_low"] and c["ci_high"] <= 1.0


def _grid(manifests) -> dict:
    recipe = tiny_experiment(manifests, train={"epochs": 1})
    return {"recipe": recipe, "seeds": [0, 1, 2], "baseline": "asr_only", "test": {"test": str(manifests["test"])},
            "evaluate": {"decoder": "greedy"},
            "variants": {"asr_only": {"tasks": {"phones": None, "speaker": None, "vad": None}},
                         "+phones": {"tasks": {"speaker": None, "vad": None}}}}


def _fake_runs(tmp_path, grid, cer):
    """Planned runs with hand-written evaluations: 20 utterances of 100 characters each."""
    from mtspeech.ablation import plan_runs

    runs = plan_runs(grid, tmp_path)
    rng = np.random.default_rng(0)
    for run in runs:
        rate = cer[run.variant][run.seed]
        errors = rng.binomial(100, rate, size=20)
        results = run.results_path("dev")
        results.parent.mkdir(parents=True)
        results.write_text(json.dumps({"asr_task": "asr", "metrics": {"asr/cer": float(errors.sum() / 2000)}}))
        (results.parent / "hypotheses.jsonl").write_text("".join(json.dumps(
            {"id": f"u{i}", "asr": {"char_errors": int(e), "ref_chars": 100}}) + "\n" for i, e in enumerate(errors)))
    return runs


@pytest.mark.parametrize("cer, want", [
    # one baseline seed stuck on the blank plateau: the utterances alone say "better", the seeds do not
    ({"asr_only": [0.24, 0.97, 0.36], "+phones": [0.17, 0.20, 0.17]}, "no detectable effect at 3 seeds"),
    ({"asr_only": [0.30, 0.31, 0.30], "+phones": [0.17, 0.18, 0.17]}, "better"),
])
def test_report_verdict_comes_from_the_seed_aware_interval(prepared_manifests, tmp_path, cer, want):
    from mtspeech.ablation import build_report, load_grid

    grid = load_grid(_grid(prepared_manifests))
    report = build_report(grid, tmp_path, _fake_runs(tmp_path, grid, cer))
    c = report["splits"]["dev"]["comparisons"]["+phones"]["asr/cer"]
    assert c["level"] == "seeds+utterances" and len(c["per_seed"]) == 3
    assert c["utterance_only"]["ci_high"] < 0  # the seeds-fixed view is sure either way
    assert c["verdict"] == want
    assert report["family"] == {"size": 1, "method": "holm", "alpha": 0.05, "members": ["dev | +phones | asr/cer"],
                                "rule": report["family"]["rule"]}
    md = (tmp_path / "report.md").read_text()
    assert f"| {want} |" in md and "**Family**: 1 comparisons" in md
    side = json.loads((tmp_path / "plots" / "dev_asr_delta.json").read_text())
    assert side["metrics"]["asr/cer"]["+phones"]["per_seed"] == c["per_seed"]  # a dot per seed
    bars = json.loads((tmp_path / "plots" / "dev_asr.json").read_text())["metrics"]["asr/cer"]
    assert all(0.0 <= r["low"] and r["high"] <= 1.0 for r in bars.values())


def test_reaggregate_a_committed_results_file(tmp_path):
    """The committed grids kept per-seed metrics and the utterance bootstrap, not hypotheses."""
    from mtspeech.ablation import reaggregate

    legacy = {
        "baseline": "asr_only", "seeds": [0, 1, 2], "variants": ["asr_only", "+phones"], "asr_task": "asr",
        "runs_finished": [f"{v}/seed{s}" for s in (0, 1, 2) for v in ("asr_only", "+phones")],
        "runs_missing": [], "failed": {},
        "splits": {"test": {"manifest": "data/test.jsonl", "table": {
            "asr_only": {"asr/cer": {"values": [0.243, 0.966, 0.358]}},
            "+phones": {"asr/cer": {"values": [0.172, 0.195, 0.167]}, "phones/per": {"values": [0.1, 0.1, 0.1]}}},
            "bootstrap": {"cer": {"+phones": {"delta": -0.344, "ci_low": -0.356, "ci_high": -0.333,
                                              "p_value": 0.0, "n_resamples": 1000}}}}},
    }
    src = tmp_path / "old.json"
    src.write_text(json.dumps(legacy))
    report = reaggregate(src, tmp_path / "out")
    c = report["splits"]["test"]["comparisons"]["+phones"]["asr/cer"]
    assert c["per_seed"] == {"0": pytest.approx(-0.071), "1": pytest.approx(-0.771), "2": pytest.approx(-0.191)}
    assert c["level"] == "seeds+utterances" and c["utterance_only"]["ci_high"] == -0.333
    assert c["ci_low"] < 0 < c["ci_high"] and c["verdict"] == "no detectable effect at 3 seeds"
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "plots" / "test_asr_delta.png").is_file()
    # against another baseline the file holds no utterance bootstrap: the seed level alone, labelled
    other = reaggregate(src, tmp_path / "vs", baseline="+phones")
    back = other["splits"]["test"]["comparisons"]["asr_only"]["asr/cer"]
    assert back["level"] == "seeds" and back["utterance_only"] is None
    with pytest.raises(ValueError, match="no variant"):
        reaggregate(src, tmp_path / "x", baseline="nope")


def test_reaggregate_a_grid_whose_baseline_is_a_tuned_search(tmp_path):
    """A results.json of today's protocol: the baseline is a search's name (its chosen trial), the
    trials are a table, not comparisons, and the file's dev-only selection is kept, not relabelled."""
    from mtspeech.ablation import reaggregate

    values = {"asr_reg_tuned.t0": [0.27, 0.27, 0.27], "asr_reg_tuned.t1": [0.26, 0.24, 0.25],
              "asr_only": [0.26, 0.257, 0.259], "+phones": [0.246, 0.232, 0.232]}
    table = {v: {"asr/cer": {"values": x}} for v, x in values.items()} | {
        "asr_reg_tuned": {"asr/cer": {"values": values["asr_reg_tuned.t1"]}}}
    current = {
        "baseline": "asr_reg_tuned", "seeds": [0, 1, 2], "variants": list(values), "asr_task": "asr",
        "runs_finished": [f"{v}/seed{s}" for s in (0, 1, 2) for v in values], "runs_missing": [], "failed": {},
        "selection_splits": ["dev"], "final": False, "test_splits": [], "test_splits_not_scored": ["test"],
        "searches": {"asr_reg_tuned": {
            "chosen": "asr_reg_tuned.t1", "metric": "asr/cer", "from": "asr_only", "split": "dev", "seeds": 3,
            "trials": {t: {"settings": {"encoder.dropout": d}, "dev_mean": sum(values[t]) / 3, "n": 3}
                       for t, d in (("asr_reg_tuned.t0", 0.2), ("asr_reg_tuned.t1", 0.1))}}},
        "splits": {"dev": {"manifest": "data/dev.jsonl", "table": table, "comparisons": {}}},
    }
    src = tmp_path / "current.json"
    src.write_text(json.dumps(current))
    report = reaggregate(src, tmp_path / "out")
    comparisons = report["splits"]["dev"]["comparisons"]
    assert set(comparisons) == {"asr_only", "+phones"}  # not the trials, not the baseline itself
    assert comparisons["+phones"]["asr/cer"]["per_seed"] == {
        "0": pytest.approx(-0.014), "1": pytest.approx(-0.008), "2": pytest.approx(-0.018)}
    assert "selection_note" not in report and report["selection_splits"] == ["dev"]
    assert report["searches"]["asr_reg_tuned"]["chosen"] == "asr_reg_tuned.t1"
    vs = reaggregate(src, tmp_path / "vs", baseline="asr_only")  # the tuned control compared like a variant
    assert vs["splits"]["dev"]["comparisons"]["asr_reg_tuned"]["asr/cer"]["per_seed"]["0"] == pytest.approx(0.0)


def test_a_grid_selects_on_dev_and_reads_test_only_with_final(prepared_manifests, tmp_path, monkeypatch):
    """Without --final no run is ever scored on a test split, and the report holds dev alone."""
    import mtspeech.evaluation.evaluate as evaluate_module
    from mtspeech.ablation import load_grid, plan_runs, run_grid
    from mtspeech.ablation.cli import add_arguments, main

    read = []

    def fake_evaluate(checkpoint, manifest, out, *args, **kwargs):
        read.append(str(manifest))
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"asr_task": "asr", "metrics": {"asr/cer": 0.5}}))

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    spec = _grid(prepared_manifests)
    spec["test"]["test-unseen"] = str(prepared_manifests["test-unseen"])
    grid = load_grid(spec)
    assert grid.dev == {"dev": str(prepared_manifests["dev"])} and not grid.final
    for run in plan_runs(grid, tmp_path):
        (run.dir / "final.pt").write_bytes(b"trained")  # nothing to train: only scoring
    report = run_grid(grid, tmp_path, jobs=1)
    assert set(read) == {str(prepared_manifests["dev"])}
    assert list(report["splits"]) == ["dev"] and report["splits"]["dev"]["role"] == "dev"
    assert report["test_splits_not_scored"] == ["test", "test-unseen"]
    assert "not scored" in (tmp_path / "report.md").read_text()

    # --final through the command: the test splits are scored, once, and the time recorded
    import argparse
    import yaml

    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(spec))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--grid", str(grid_file), "--out", str(tmp_path), "--final"])) == 0
    assert {str(prepared_manifests[s]) for s in ("test", "test-unseen")} <= set(read)
    final = json.loads((tmp_path / "results.json").read_text())
    assert final["final"] and set(final["splits"]) == {"dev", "test", "test-unseen"}
    assert final["final_record"]["test_splits"] == ["test", "test-unseen"]


def test_a_split_cannot_be_both_dev_and_test(prepared_manifests):
    from mtspeech.ablation import load_grid
    from mtspeech.config import ConfigError

    spec = _grid(prepared_manifests)
    spec["dev"] = {"test": str(prepared_manifests["test"])}
    with pytest.raises(ConfigError, match="both dev and test"):
        load_grid(spec)


def test_a_search_is_drawn_once_trained_as_variants_and_chosen_on_dev(prepared_manifests, tmp_path):
    """A tuned static-weight baseline: trials are ordinary variants, the pick reads dev only,
    and the report compares under the search's name (here as the baseline)."""
    from mtspeech.ablation import build_report, load_grid

    spec = _grid(prepared_manifests)
    spec["variants"]["+phones_uncertainty"] = {"tasks": {"speaker": None, "vad": None}, "weighting.kind": "uncertainty"}
    spec["searches"] = {"static_tuned": {"from": "+phones", "trials": 3, "seed": 7,
                                         "space": {"tasks.phones.weight": ["log_uniform", 0.1, 3.0]}}}
    spec["baseline"] = "static_tuned"
    grid = load_grid(spec)
    assert load_grid(spec).searches == grid.searches  # the draw is deterministic
    trials = list(grid.searches[0].trials)
    assert trials == ["static_tuned.t0", "static_tuned.t1", "static_tuned.t2"]
    assert set(trials) <= set(grid.variants) and "static_tuned" not in grid.variants
    weights = [grid.variants[t]["tasks"]["phones"]["weight"] for t in trials]
    assert all(0.1 <= w <= 3.0 for w in weights) and len(set(weights)) == 3
    assert grid.variants[trials[0]]["tasks"]["speaker"] is None  # the base variant's settings stay
    best = trials[1]
    cer = {v: [0.40, 0.41, 0.39] for v in grid.variants}
    cer[best] = [0.20, 0.21, 0.19]
    report = build_report(grid, tmp_path, _fake_runs(tmp_path, grid, cer))
    assert report["searches"]["static_tuned"]["chosen"] == best
    dev = report["splits"]["dev"]
    assert dev["table"]["static_tuned"] == dev["table"][best]
    assert set(dev["comparisons"]) == {"asr_only", "+phones", "+phones_uncertainty"}  # trials are not compared
    assert dev["comparisons"]["+phones_uncertainty"]["asr/cer"]["delta"] > 0.1
    md = (tmp_path / "report.md").read_text()
    assert f"| {best} ✓ |" in md and "optimistic" in md


def test_a_bad_search_is_a_clear_error(prepared_manifests):
    from mtspeech.ablation import load_grid
    from mtspeech.config import ConfigError

    spec = _grid(prepared_manifests)
    for bad, match in (({"from": "nope", "trials": 2, "space": {"a": ["uniform", 0, 1]}}, "not a variant"),
                       ({"from": "+phones", "trials": 2, "space": {"a": ["log_uniform", 0, 1]}}, "low > 0"),
                       ({"from": "+phones", "trials": 0, "space": {"a": ["choice", 1, 2]}}, "positive integer"),
                       ({"from": "+phones", "trials": 2, "space": {"a": ["gauss", 0, 1]}}, "expected")):
        spec["searches"] = {"s": bad}
        with pytest.raises(ConfigError, match=match):
            load_grid(spec)


def test_the_final_test_set_never_selects_and_is_scored_only_with_final(prepared_manifests):
    """test-final (docs/data.md) and its twins may not be dev splits under any name; under
    `test:` they are scored only with --final."""
    from mtspeech.ablation import load_grid
    from mtspeech.config import ConfigError

    spec = _grid(prepared_manifests)
    for dev in ({"test-final": str(prepared_manifests["dev"])}, {"mine": "data/synthetic/test-final-snr10.jsonl"}):
        with pytest.raises(ConfigError, match="final test set"):
            load_grid({**spec, "dev": dev})
    spec["test"] = {**spec["test"], "test-final": "data/synthetic/test-final.jsonl"}
    assert "test-final" not in load_grid(spec).splits
    assert load_grid(spec, final=True).splits["test-final"] == "data/synthetic/test-final.jsonl"
    assert load_grid({**spec, "dev": {"test-finalists": str(prepared_manifests["dev"])}}).dev  # only the name itself
