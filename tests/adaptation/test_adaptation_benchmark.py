"""benchmarks/adaptation.py end to end on the tiny model: two voices, k = 1 and 2, two seeds; and
benchmarks/adaptation_tuning.py, which chooses the step sizes on dev voices with its loop."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from bench_module import load_benchmark

from mtspeech.adaptation import reptile
from mtspeech.adaptation.param_sets import AdaptationError, ParamSetConfig
from mtspeech.data.manifest import read_manifest, write_manifest

bench = load_benchmark("adaptation")


def test_benchmark_scores_only_utterances_it_did_not_adapt_on(tiny_trained, new_condition, prepared_manifests,
                                                             tmp_path):
    utts = read_manifest(new_condition)
    two_voices = [dataclasses.replace(u, speaker="AB"[i % 2]) for i, u in enumerate(utts)]  # 4 utterances each
    manifest = tmp_path / "voices.jsonl"
    write_manifest(manifest, two_voices)
    meta = tmp_path / "meta.pt"
    reptile.meta_train(tiny_trained, read_manifest(prepared_manifests["train"]), ParamSetConfig("layer-norms", layers=1),
                       meta, reptile.ReptileConfig(outer_steps=1, meta_batch=1, k=1, inner_steps=1))
    out = tmp_path / "adaptation.json"
    bench.main(["--model", str(tiny_trained), "--meta", str(meta), "--manifest", str(manifest),
                "--params", "layer-norms", "--layers", "1", "--ks", "1", "2", "4", "--seeds", "0", "1",
                "--steps", "2", "--threads", "1", "--resamples", "200", "--out", str(out)])
    result = json.loads(out.read_text())

    assert result["methods"] == ["none", "fine-tune", "reptile"]
    assert "--speaker-adapter" in result["not_available"]["speaker-embedding"]
    assert {(s["voice"], s["k"]) for s in result["skipped"]} == {("A", 4), ("B", 4)}  # nothing left to score
    assert len(result["runs"]) == 2 * 2 * 2  # voices x k in (1, 2) x seeds
    for run in result["runs"]:
        assert len(run["adapted_on"]) == run["k"]
        assert not set(run["adapted_on"]) & set(run["scored"])
        assert set(run["scored"]) | set(run["adapted_on"]) == {u.id for u in two_voices if u.speaker == run["voice"]}
    for method in result["methods"]:
        for k in ("1", "2"):
            r = result["results"][method][k]
            for key in ("cer", "ci_low", "ci_high", "delta_vs_none", "seed_ci_low", "seed_ci_high"):
                assert math.isfinite(r[key]), (method, k, key)
            assert r["ci_low"] <= r["cer"] <= r["ci_high"]
            assert r["voices"] == 2 and r["scored_utterances"] == 2 * (4 - int(k)) * 2
    assert result["results"]["none"]["1"]["delta_vs_none"] == 0
    assert result["results"]["fine-tune"]["1"]["delta_bytes"] > 0
    assert result["results"]["reptile"]["1"]["adapt_seconds_median"] > 0


def test_benchmark_scores_speaker_embedding_alone_when_asked(tiny_trained, new_condition, prepared_manifests,
                                                            tmp_path):
    from mtspeech.adaptation.train_speaker_adapter import AdapterTrainingConfig, train_speaker_adapter

    utts = read_manifest(new_condition)
    manifest = tmp_path / "voices.jsonl"
    write_manifest(manifest, [dataclasses.replace(u, speaker="AB"[i % 2]) for i, u in enumerate(utts)])
    adapter = tmp_path / "adapter.pt"
    train_speaker_adapter(tiny_trained, read_manifest(prepared_manifests["train"]), adapter,
                          training=AdapterTrainingConfig(steps=1, voices_per_step=1, max_k=1, query=1))
    out = tmp_path / "adaptation.json"
    common = ["--model", str(tiny_trained), "--manifest", str(manifest), "--ks", "1", "2", "--seeds", "0",
              "--threads", "1", "--resamples", "200"]
    bench.main([*common, "--speaker-adapter", str(adapter), "--methods", "speaker-embedding", "--out", str(out)])
    result = json.loads(out.read_text())

    assert result["methods"] == ["none", "speaker-embedding"] and "fine-tune" not in result["results"]
    assert result["speaker_adapter"]["steps_done"] == 1
    for run in result["runs"]:
        assert len(run["adapted_on"]) == run["k"] and not set(run["adapted_on"]) & set(run["scored"])
        assert set(run["errors"]) == {"none", "speaker-embedding"}
    r = result["results"]["speaker-embedding"]["1"]
    assert r["delta_bytes"] > 0 and r["adapt_seconds_median"] > 0 and r["voices"] == 2
    with pytest.raises(SystemExit):  # a method whose checkpoint is missing is a usage error, not an empty row
        bench.main([*common, "--methods", "reptile"])
    with pytest.raises(SystemExit):
        bench.main([*common, "--speaker-adapter", str(tiny_trained)])  # no adapter in it


tuning = load_benchmark("adaptation_tuning")


def test_tuning_picks_the_step_size_with_the_lowest_mean_cer_and_the_smaller_on_a_tie():
    by_lr = {"0.001": {"1": {"cer": 0.375}, "5": {"cer": 0.125}},    # mean 0.25
             "0.01": {"1": {"cer": 0.25}, "5": {"cer": 0.25}},        # mean 0.25: a tie, the larger step
             "0.0001": {"1": {"cer": 0.3125}, "5": {"cer": 0.3125}}}  # mean 0.3125
    chosen = tuning.choose(by_lr, [1, 5])
    assert chosen["lr"] == 0.001 and chosen["best_lr_per_k"] == {"1": 0.01, "5": 0.001}
    assert tuning.parse_grid(["lora=3e-4,1e-4"]) == {"lora": [1e-4, 3e-4]}
    for bad in ("lora", "nope=1e-3", "lora=fast"):
        with pytest.raises(AdaptationError):
            tuning.parse_grid([bad])


def test_tuning_runs_every_set_and_step_size_on_the_same_voices(tiny_trained, new_condition, tmp_path):
    out = tmp_path / "tuning.json"
    tuning.main(["--model", str(tiny_trained), "--manifest", str(new_condition), "--grid", "layer-norms=1e-3,1e-2",
                 "input-norm=1e-2", "--ks", "1", "--steps", "1", "--threads", "1", "--resamples", "100",
                 "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["sets"]) == {"layer-norms", "input-norm"}
    assert set(result["sets"]["layer-norms"]["by_lr"]) == {"0.001", "0.01"}
    for entry in result["sets"].values():
        assert str(entry["chosen"]["lr"]) in entry["by_lr"]
        for by_k in entry["by_lr"].values():  # scored on the voice's other utterances, as the benchmark does
            assert by_k["1"]["scored_utterances"] == result["none"]["1"]["scored_utterances"] > 0
    assert "(chosen)" in tuning.render(result)

    tuning.main(["--model", str(tiny_trained), "--manifest", str(new_condition), "--grid", "layer-norms=1e-1",
                 "lora=1e-3", "--ks", "1", "--steps", "1", "--threads", "1", "--resamples", "100", "--out", str(out)])
    extended = json.loads(out.read_text())  # the earlier step sizes kept as measured, the new ones added
    assert list(extended["sets"]["layer-norms"]["by_lr"]) == ["0.001", "0.01", "0.1"]
    assert extended["sets"]["layer-norms"]["by_lr"]["0.01"] == result["sets"]["layer-norms"]["by_lr"]["0.01"]
    assert extended["sets"]["input-norm"] == result["sets"]["input-norm"] and "lora" in extended["sets"]
    assert extended["grid"]["layer-norms"] == [1e-3, 1e-2, 1e-1] and extended["seconds"] > result["seconds"]

    # an interrupted run's JSON lists its whole grid but holds only what it measured: resuming keeps those
    out.write_text(json.dumps(extended | {"grid": extended["grid"] | {"lora": [1e-3, 1e-2]}, "unfinished": True}))
    tuning.main(["--model", str(tiny_trained), "--manifest", str(new_condition), "--grid", "input-norm=1e-2",
                 "--ks", "1", "--steps", "1", "--threads", "1", "--resamples", "100", "--out", str(out)])
    finished = json.loads(out.read_text())
    assert finished["grid"]["lora"] == [1e-3] and "unfinished" not in finished
    assert finished["sets"] == extended["sets"]  # nothing re-run
