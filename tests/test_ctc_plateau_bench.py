"""benchmarks/ctc_plateau.py: the escape rule, arm parsing and the log reader (no training)."""

import argparse
import json

import pytest

from bench_module import load_benchmark

plateau = load_benchmark("ctc_plateau")


def test_escape_is_the_first_update_where_five_logged_losses_average_below_the_threshold():
    flat = [(10 * i, 3.85) for i in range(1, 30)]
    falling = [(300 + 10 * i, 3.85 - 0.2 * i) for i in range(1, 10)]
    assert plateau.escape_update(flat, 3.0) is None
    # means of the last five: 3.25 at update 350 (3.65..2.85), 3.05 at 360, 2.85 at 370
    assert plateau.escape_update(flat + falling, 3.0) == 370
    assert plateau.escape_update([(10, 2.0)] * 4, 3.0) is None  # fewer than five logged losses


def test_arms_parse_and_bad_ones_are_refused():
    assert plateau.parse_arm("base") == ("base", [])
    assert plateau.parse_arm("sg:data.sorted_epochs=1,optim.lr=0.001") == (
        "sg", ["data.sorted_epochs=1", "optim.lr=0.001"])
    for bad in (":x=1", "a:novalue"):
        with pytest.raises(argparse.ArgumentTypeError):
            plateau.parse_arm(bad)


def test_run_summary_reads_losses_and_dev_cer_and_says_why_it_stopped(tmp_path):
    rows = [{"step": s, "loss/asr": 3.9 if s < 500 else 2.0} for s in range(10, 800, 10)]
    rows.insert(24, {"step": 243, "epoch": 1, "dev/asr/cer": 1.0})
    rows.insert(30, {"step": 250, "loss/asr": 3.7})  # logged again after a resume: the later record counts
    (tmp_path / "train_log.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n{\"step\": 8")  # torn line
    run = plateau.summarize_run(tmp_path, "asr", 3.0, 2000)
    # at 520 the last five are 3.9, 3.9, 2.0, 2.0, 2.0: mean 2.76
    assert run["escape_update"] == 520 and run["stopped_by"] == "escape"
    assert run["dev_cer"] == [[243, 1.0]] and run["loss_every_100"][0] == [100, 3.9]
    assert plateau.read_log(tmp_path, "asr")[0][24] == (250, 3.7)
    assert plateau.summarize_run(tmp_path, "asr", 1.0, 700)["stopped_by"] == "max_updates"


def test_render_names_each_seed_escape_or_budget():
    run = {"escape_update": None, "updates": 1500, "loss_every_100": [[500, 3.9], [1000, 3.8], [1500, 3.5]],
           "dev_cer": [[1458, 0.97]]}
    summary = {"max_updates": 1500, "window": 5, "escape_loss": 3.0,
               "arms": {"base": {"overrides": [], "runs": {"seed0": run,
                                                           "seed1": {**run, "escape_update": 900}}},
                        "sg": {"overrides": ["data.sorted_epochs=1"], "runs": {"seed0": run}}}}
    text = plateau.render(summary)
    assert "no (1500 run)" in text and " 900 " in text and "data.sorted_epochs=1" in text
    assert " 0.97 " in text + " " and "loss@2000" not in text


def test_runs_trained_to_the_end_give_the_best_dev_cer_spread_over_seeds(tmp_path):
    runs = {}
    for seed, cers in enumerate(([1.0, 0.5, 0.30, 0.31], [1.0, 0.9, 0.40], [0.8, 0.35])):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "train_log.jsonl").write_text(json.dumps({"step": 10, "loss/asr": 3.9}) + "\n")
        curve = [{"epoch": i + 1, "asr/cer": c} for i, c in enumerate(cers)]
        (d / "stopping.json").write_text(json.dumps({"stopped_by": "plateau" if seed else "cap", "epochs": len(cers),
                                                     "updates": 100 * len(cers), "dev_curve": curve}))
        runs[f"seed{seed}"] = plateau.summarize_run(d, "asr", 3.0, 2000)
    assert runs["seed0"]["end"] == {"stopped_by": "cap", "epochs": 4, "updates": 400, "best_dev_cer": 0.3}
    spread = plateau.end_spread(runs)
    assert spread["per_seed"] == [0.3, 0.4, 0.35] and spread["mean"] == 0.35 and spread["sd"] == 0.05
    assert spread["stopped_by"] == ["cap", "plateau", "plateau"]
    runs["seed2"]["end"] = None  # one run not trained to its end yet: no spread
    assert plateau.end_spread(runs) is None
