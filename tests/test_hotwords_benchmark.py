"""Smoke test of benchmarks/hotwords.py on the session's tiny corpus and a random model with a
phone head: it plans targets and sentences, renders them with the corpus's voices, decodes with
and without the list and writes JSON with every headline number present (values mean nothing)."""

from __future__ import annotations

import json
import math

import pytest
from bench_module import load_benchmark

from mtspeech.data.manifest import read_manifest
from mtspeech.decoding.lm import build_ngram_lm

pytestmark = pytest.mark.slow  # renders speech and decodes it four times: ~30 s on two shared cores


def test_hotwords_benchmark_end_to_end(synth_corpus, prepared_manifests, tmp_path):
    bench = load_benchmark("hotwords")
    ckpt = load_benchmark("_tiny_model").build_random_checkpoint(tmp_path / "tiny.pt", phones=True)
    data = prepared_manifests["train"].parent
    lm = build_ngram_lm([u.text for u in read_manifest(prepared_manifests["train"])], 2, tmp_path / "lm.arpa")
    out = tmp_path / "hot.json"
    bench.main(["--model", str(ckpt), "--data", str(data), "--corpus", str(synth_corpus), "--lm", str(lm),
                "--targets", "4", "--per-word", "1", "--list-size", "6", "--boosts", "2", "--limit-test", "3",
                "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["hotword_set"]["utterances"] == 4 and result["settings"]["list_size"] == 6
    assert set(result["decoders"]) == {"phones", "beam"}
    for decoder in result["decoders"].values():
        assert set(decoder["runs"]) == {"without", "added only", "boost 2"}
        for run in decoder["runs"].values():
            assert 0 <= run["recall"] <= 1 and run["false_alarms"] >= 0
            assert all(math.isfinite(run[k]) for k in ("test_wer", "test_wer_change_points", "rtf"))
            low, high = run["test_wer_change_ci_points"]
            assert low <= run["test_wer_change_points"] <= high
        assert [w["occurrences"] for w in decoder["words"]] == [1] * 4
    assert "--targets 4" in result["command"]
