"""Plots are valid PNGs whose JSON sidecar holds the input numbers."""

import json

import pytest

from mtspeech.evaluation.plots import plot_metric_bars, plot_training_curves
from mtspeech.evaluation.stats import mean_std_ci

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TABLE = {
    "asr only": {"wer": [0.31, 0.29, 0.33], "eer": [0.20, 0.22, 0.19]},
    "asr+phones": {"wer": [0.27, 0.26, 0.28], "eer": [0.18, 0.21, 0.2]},
    "asr+phones+spk": {"wer": [0.28, 0.27, 0.26], "eer": [0.09, 0.1, 0.11]},
    "one seed": {"wer": 0.25, "eer": 0.3},
}


def test_metric_bars_png_and_sidecar(tmp_path):
    out = plot_metric_bars(TABLE, ["wer", "eer"], tmp_path / "bars.png", error="ci")
    assert out.read_bytes()[:8] == PNG_MAGIC
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["variants"] == list(TABLE)
    for metric in ("wer", "eer"):
        for variant, row in TABLE.items():
            got = side["metrics"][metric][variant]
            values = row[metric] if isinstance(row[metric], list) else [row[metric]]
            s = mean_std_ci(values)
            assert got["values"] == values and got["n"] == len(values)
            assert got["mean"] == pytest.approx(s.mean)
            assert got["err"] == (None if len(values) == 1 else pytest.approx(s.half_width))
    std = plot_metric_bars(TABLE, ["wer"], tmp_path / "std.png", error="std")
    assert json.loads(std.with_suffix(".json").read_text())["metrics"]["wer"]["asr only"]["err"] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="cer"):
        plot_metric_bars(TABLE, ["cer"], tmp_path / "x.png")


def test_training_curves_flat_and_per_task(tmp_path):
    flat = {"a": [(0, 3.0), (10, 2.0), (20, 1.5)], "b": [(0, 3.1), (10, 2.5)]}
    out = plot_training_curves(flat, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["panels"]["loss"]["a"] == [[0, 3.0], [10, 2.0], [20, 1.5]]
    nested = {"a": {"asr": [(0, 5.0), (1, 4.0)], "vad": [(0, 0.7)]}, "b": {"asr": [(0, 5.2)]}}
    side2 = json.loads(plot_training_curves(nested, tmp_path / "t.png").with_suffix(".json").read_text())
    assert set(side2["panels"]) == {"asr", "vad"}
    assert side2["panels"]["asr"]["b"] == [[0, 5.2]] and "b" not in side2["panels"]["vad"]


def test_train_log_plot_holds_losses_and_dev_metrics(tmp_path):
    from mtspeech.evaluation.plots import plot_train_log

    log = tmp_path / "exp" / "train_log.jsonl"
    log.parent.mkdir()
    rows = [{"step": 10, "epoch": 0, "lr": 1e-3, "loss/asr": 3.0, "loss/vad": 0.5},
            {"step": 20, "epoch": 0, "lr": 1e-3, "loss/asr": 2.0, "loss/vad": 0.4},
            {"step": 20, "epoch": 1, "dev/asr/cer": 0.9, "dev/asr/loss": 2.5, "dev/vad/f1": 0.8},
            {"step": 20, "epoch": 0, "lr": 1e-3, "loss/asr": 1.5, "loss/vad": 0.3}]  # resumed: re-logged
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    png = plot_train_log(log, tmp_path / "curves.png")
    side = json.loads(png.with_suffix(".json").read_text())
    assert png.stat().st_size > 1000
    assert side["panels"]["training loss"]["asr"] == [[10.0, 3.0], [20.0, 1.5]]
    assert side["panels"]["dev asr"] == {"cer": [[20.0, 0.9]]}  # dev losses are left out
    assert side["panels"]["dev vad"] == {"f1": [[20.0, 0.8]]}
