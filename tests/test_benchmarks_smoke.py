"""Smoke test of the serving benchmarks (benchmarks/server_load.py, endpoint_latency.py, endpoint_grid.py)
and of benchmarks/cli_startup.py.

A tiny randomly initialised checkpoint, two 1.6 s utterances of synthetic "speech" with
known speech segments, one or two streams: the benchmarks must run end to end and write
JSON with every headline number present and finite. (Their values mean nothing here.)
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile
from bench_module import load_benchmark

from mtspeech.data.features import FeatureConfig
from mtspeech.data.geometry import SUBSAMPLING

RATE = 16000

pytestmark = pytest.mark.slow  # starts a server subprocess: ~20 s on two shared cores


_load = load_benchmark


def _utterance(seed: int) -> np.ndarray:
    """0.2 s of faint noise, 1.2 s of a swept tone with noise ("speech"), 0.2 s of faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(1.2 * RATE)) / RATE
    voiced = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.7 * t + seed)) * t)
    voiced += 0.05 * rng.standard_normal(len(t))
    quiet = lambda n: 0.003 * rng.standard_normal(n)  # noqa: E731
    return np.concatenate([quiet(int(0.2 * RATE)), voiced, quiet(int(0.2 * RATE))]).astype(np.float32)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    tiny = _load("_tiny_model")
    root = tmp_path_factory.mktemp("bench_smoke")
    ckpt = tiny.build_random_checkpoint(root / "tiny.pt")
    lines = []
    for i in range(2):
        wav = root / f"utt{i}.wav"
        soundfile.write(wav, _utterance(i), RATE, subtype="PCM_16")
        lines.append(json.dumps({"id": f"utt{i}", "audio": wav.name, "duration": 1.6, "text": "THE LITTLE MAN",
                                 "speaker": "s", "sex": "F", "phones": None, "speech": [[0.2, 1.4]]}))
    manifest = root / "smoke.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return {"root": root, "ckpt": ckpt, "manifest": manifest, "wav": root / "utt0.wav"}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_endpoint_latency_benchmark(assets):
    bench = _load("endpoint_latency")
    out = assets["root"] / "endpoint.json"
    bench.main(["--model", str(assets["ckpt"]), "--manifest", str(assets["manifest"]), "--limit", "2",
                "--tail-silence", "1.0", "--rule1", "0.8", "--rule2", "0.4", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["modes"]) == {"vad", "blank"}
    for mode in result["modes"].values():
        assert mode["utterances"] == 2
        assert mode["finalized"] + mode["no_output"] == 2
        assert mode["endpointed"] + mode["at_eos"] == mode["finalized"]
        assert _finite(mode["wer"]) and _finite(mode["cer"])
        for key in ("mean", "p50", "p95"):
            assert mode["delay_s"][key] is None or _finite(mode["delay_s"][key])
    assert result["modes"]["vad"]["finalized"] > 0, "the random model should emit something on this audio"
    c = result["comparison"]
    assert set(c) >= {"paired_utterances", "vad_earlier_by_s", "delay_ratio_vad_over_blank", "wer_diff_vad_minus_blank"}
    if c["paired_utterances"]:
        assert _finite(c["vad_earlier_by_s"]["mean"]) and _finite(c["mean_delay_blank_s"])
    for row in result["per_utterance"]:
        assert row["speech_end"] == pytest.approx(1.4) and row["audio_end"] == pytest.approx(2.6)


def test_server_load_benchmark(assets):
    bench = _load("server_load")
    out = assets["root"] / "load.json"
    bench.main(["--model", str(assets["ckpt"]), "--audio", str(assets["wav"]), "--levels", "1,2",
                "--seconds-per-level", "0.5", "--intra-op-threads", "1", "--keep-going", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [lv["streams"] for lv in result["levels"]] == [1, 2]
    assert result["baseline"]["streams"] == 1
    kept_up = [lv["streams"] for lv in result["levels"] if lv["keeps_up"]]
    assert result["max_streams_keeping_up"] == max(kept_up, default=0)
    for lv in result["levels"]:
        assert lv["errors"] == 0 and lv["completed"] == lv["utterances"] >= lv["streams"]
        assert lv["partials"] > 0 and lv["partials_unmatched"] == 0
        for key in ("audio_s", "x_realtime", "partial_latency_p50_s", "partial_latency_p95_s",
                    "final_latency_p50_s", "final_latency_p95_s", "rtf", "mean_batch_size",
                    "server_cpu_s", "cpu_cores", "rtf_cpu", "efficiency_audio_s_per_cpu_s", "efficiency_vs_n1"):
            assert _finite(lv[key]), (key, lv[key])
        assert lv["audio_s"] == pytest.approx(1.6 * lv["utterances"], rel=0.05)
        # each decoding process's CPU, largest first, within the server's (which adds the supervisor)
        workers = lv["worker_cpu_s"]
        assert workers and workers == sorted(workers, reverse=True) and min(workers) >= 0
        assert sum(workers) <= lv["server_cpu_s"] + 0.02  # /proc counts 10 ms ticks per process
        if lv["keeps_up"]:  # the documented bound, checked on the level's own measurements
            assert lv["final_latency_p95_s"] < 0.5 and lv["rtf"] < 1 and not lv["why_not"], lv
        else:
            assert lv["why_not"], lv


def test_server_load_through_nginx_replicas(assets):
    """`--replicas 2`: the streams go through nginx to two replicas, and the levels count what
    both did: the audio the replicas' /metrics report adds up to what the clients sent, and the
    CPU column includes every process of the group."""
    bench = _load("server_load")
    if bench_nginx() is None:
        pytest.fail("nginx is not installed: scripts/setup.sh installs it with MTSPEECH_NGINX=1 (CI does)")
    out = assets["root"] / "replicas.json"
    bench.main(["--model", str(assets["ckpt"]), "--audio", str(assets["wav"]), "--levels", "4",
                "--seconds-per-level", "0.5", "--intra-op-threads", "1", "--replicas", "2", "--keep-going",
                "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["settings"]["replicas"] == 2
    (lv,) = result["levels"]
    assert lv["errors"] == 0 and lv["completed"] == lv["utterances"] >= 4
    # each utterance is 1.6 s and every one was decoded by one of the two replicas
    assert lv["audio_s"] == pytest.approx(1.6 * lv["utterances"], rel=0.05)
    assert _finite(lv["server_cpu_s"]) and lv["server_cpu_s"] > 0
    # nginx's own CPU, part of the group's; /proc counts it in 10 ms ticks, so a 0.5 s level may show 0
    assert 0 <= lv["balancer_cpu_s"] <= lv["server_cpu_s"]


def bench_nginx():
    import shutil
    from pathlib import Path

    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def test_server_load_feature_sets_in_one_run(assets):
    """Plain streams and streams asking for speaker turns and 100 hotwords, interleaved against one
    server: the cost rows are there, and each kind of stream got what it asked for (the server
    accepted 100 hotwords, diarization streams received speaker turns, plain ones none)."""
    tiny = _load("_tiny_model")
    # a speaker head, and a VAD that calls every frame speech, so a 1.6 s stream holds the
    # 32 speech frames that found its first speaker
    ckpt = tiny.all_speech_vad(tiny.build_random_checkpoint(assets["root"] / "tiny_speaker.pt", speaker=True))
    bench = _load("server_load")
    out = assets["root"] / "features.json"
    bench.main(["--model", str(ckpt), "--manifest", str(assets["manifest"]), "--utterances", "1", "--levels", "1",
                "--repeats", "2", "--seconds-per-level", "0.5", "--intra-op-threads", "1", "--keep-going",
                "--decoder", "beam", "--lm", "none", "--features", "plain,diarization+hotwords100", "--out", str(out)])
    result = json.loads(out.read_text())
    sets = {f["name"]: f for f in result["feature_sets"]}
    assert list(sets) == ["plain", "diarization+hotwords100"] and sets["diarization+hotwords100"]["speakers"]
    words = sets["diarization+hotwords100"]["hotwords"]
    assert len(set(words)) == 100 and not set(words) & {"THE", "LITTLE", "MAN"}  # none the test sentence says
    plain, featured = result["levels"], result["feature_levels"]
    assert [lv["features"] for lv in plain] == ["plain"] * 2
    assert [lv["features"] for lv in featured] == ["diarization+hotwords100"] * 2
    for lv in plain + featured:  # 100 hotwords refused would be an error message and no completed utterance
        assert lv["errors"] == 0 and lv["completed"] == lv["utterances"] >= 1, lv
        assert lv["partials_unmatched"] == 0 and _finite(lv["rtf_cpu"])
    for lv in plain:
        assert lv["speaker_changes"] == 0 and lv["finals_with_speaker"] == 0
    for lv in featured:  # each utterance's stream found its first speaker, and its finals carry it
        assert lv["speaker_changes"] >= lv["utterances"] and lv["finals_with_speaker"] == lv["finals"] > 0, lv
    rows = {r["features"]: r for r in result["feature_costs"]}
    assert set(rows) == set(sets) and all(r["streams"] == 1 and r["repeats"] == 2 for r in rows.values())
    assert rows["plain"]["vs_plain"] == 1.0 and _finite(rows["diarization+hotwords100"]["vs_plain"])
    lo, hi = rows["diarization+hotwords100"]["vs_plain_range"]
    assert 0 < lo <= rows["diarization+hotwords100"]["vs_plain"] <= hi
    text = bench.render(result)
    assert "cost per feature set" in text and text.count("[diarization+hotwords100]") == 2


def test_server_load_summary_of_hand_made_levels():
    """_result on three levels whose efficiencies and keep-up verdicts are known: efficiency
    relative to N=1 and the largest N that kept up, worked out by hand."""
    import argparse

    bench = _load("server_load")
    ap = argparse.ArgumentParser()
    bench.add_arguments(ap)
    args = ap.parse_args(["--model", "m.pt", "--max-partial-latency", "1.0"])
    levels = [{"streams": 1, "keeps_up": True, "efficiency_audio_s_per_cpu_s": 4.0},
              {"streams": 2, "keeps_up": True, "efficiency_audio_s_per_cpu_s": 3.0},
              {"streams": 4, "keeps_up": False, "efficiency_audio_s_per_cpu_s": 1.0}]
    result = bench._result(levels, args, "files", [])
    assert [lv["efficiency_vs_n1"] for lv in result["levels"]] == [1.0, 0.75, 0.25]
    assert result["max_streams_keeping_up"] == 2
    assert result["baseline"] == {"streams": 1, "efficiency_audio_s_per_cpu_s": 4.0}
    # repeats: N=2 kept up in one run of two, so the largest N kept up in every run is 1
    repeated = levels[:2] + [{"streams": 2, "keeps_up": False, "efficiency_audio_s_per_cpu_s": 3.0}]
    result = bench._result(repeated, args, "files", [])
    assert result["max_streams_keeping_up"] == 1
    assert [(r["streams"], r["repeats"], r["keeps_up"]) for r in result["summary"]] == [(1, 1, True), (2, 2, False)]
    levels[0]["keeps_up"] = levels[1]["keeps_up"] = False
    assert bench._result(levels, args, "files", [])["max_streams_keeping_up"] == 0


def test_batch_step_benchmark(assets):
    bench = _load("batch_step")
    out = assets["root"] / "batch_step.json"
    bench.main(["--model", str(assets["ckpt"]), "--manifest", "missing.jsonl", "--batch-sizes", "1", "3",
                "--steps", "2", "--backend", "torch", "torch-traced", "--out", str(out)])
    backends = json.loads(out.read_text())["backends"]
    assert set(backends) == {"torch", "torch-traced"}
    rows = backends["torch"] + backends["torch-traced"]
    assert [r["batch"] for r in rows] == [1, 3, 1, 3] and rows[0]["vs_first"] == 1.0
    # A step decodes one chunk per stream: 8 encoder frames, each SUBSAMPLING feature hops of audio.
    # The chunk's seconds come from the front end here, not from the script's own constant.
    chunk_s = 8 * SUBSAMPLING * FeatureConfig().hop_length / FeatureConfig().sample_rate
    for r in rows:
        assert r["step_ms"] > 0
        assert r["realtime_streams"] * r["step_ms"] / 1e3 / r["batch"] == pytest.approx(chunk_s, rel=0.05)


def test_capacity_table_from_a_load_run(tmp_path, capsys):
    """The arithmetic behind docs/deploy.md's capacity table."""
    capacity = _load("capacity")
    rows = capacity.capacity_table({"max_streams_keeping_up": 16, "settings": {"cpu_count": 2}}, 8, 0.7)
    assert [(r["cores"], r["replicas"]) for r in rows] == [(179, 23), (1786, 224), (17858, 2233)]
    load = tmp_path / "load.json"
    load.write_text(json.dumps({"max_streams_keeping_up": 16, "settings": {"cpu_count": 2}, "model": "m"}))
    capacity.main([str(load)])
    assert "| 100,000 | 5.6 | 17,858 | 2,233 |" in capsys.readouterr().out
    # a run over several backends: one table each, a backend that kept up with nothing says so
    load.write_text(json.dumps({"backends": {
        "torch": {"max_streams_keeping_up": 16, "settings": {"cpu_count": 2}, "model": "m"},
        "onnx": {"max_streams_keeping_up": 0, "settings": {"cpu_count": 2}, "model": "m"}}}))
    tables = capacity.main([str(load)])
    assert list(tables) == ["torch"] and "[onnx] kept up with no level" in capsys.readouterr().out
    with pytest.raises(ValueError, match="kept up with no level"):
        capacity.capacity_table({"max_streams_keeping_up": 0, "settings": {"cpu_count": 2}}, 8, 0.7)


def test_streaming_decoders_benchmark(assets):
    bench = _load("streaming_decoders")
    out = assets["root"] / "decoders.json"
    result = bench.main(["--model", str(assets["ckpt"]), "--manifest", str(assets["manifest"]),
                         "--beam-size", "4", "--out", str(out)])
    assert json.loads(out.read_text())["decoders"].keys() == {"greedy", "beam"}  # no LM: no phones decoder
    for r in result["decoders"].values():
        assert 0.0 <= r["cer"] and _finite(r["rtf"]) and r["rtf"] > 0
    assert result["decoders"]["greedy"]["rtf_vs_greedy"] == 1.0 and result["utterances"] == 2


def test_server_decoders_benchmark(assets):
    """Greedy through a real server subprocess: every utterance scored, server CPU measured."""
    bench = _load("server_decoders")
    out = assets["root"] / "server_decoders.json"
    result = bench.main(["--model", str(assets["ckpt"]), "--manifest", str(assets["manifest"]),
                         "--decoders", "greedy", "--out", str(out)])
    greedy = json.loads(out.read_text())["decoders"]["greedy"]
    assert result["decoders"].keys() == {"greedy"} and result["utterances"] == 2
    assert len(greedy["hypotheses"]) == 2 and greedy["cer"] >= 0.0
    assert greedy["audio_s"] == pytest.approx(2 * 1.6, rel=0.05)  # the server got all the audio once
    for key in ("cpu_rtf", "step_rtf", "server_cpu_s"):
        assert _finite(greedy[key]) and greedy[key] > 0, (key, greedy[key])
    assert greedy["vs_greedy"] == 1.0


def test_endpoint_grid_summarises_every_run_per_variant(assets):
    """Two variants x two seeds of (identical) tiny checkpoints laid out as an ablation grid:
    every run is measured and each variant's row averages its two seeds."""
    import shutil

    bench = _load("endpoint_grid")
    grid = assets["root"] / "grid"
    for variant in ("base", "other"):
        for seed in (0, 1):
            d = grid / "runs" / variant / f"seed{seed}"
            d.mkdir(parents=True)
            shutil.copy(assets["ckpt"], d / "final.pt")
    out = assets["root"] / "grid.json"
    result = bench.main(["--grid-out", str(grid), "--out", str(out), "--", "--manifest", str(assets["manifest"]),
                         "--limit", "2", "--tail-silence", "1.0", "--rule1", "0.8", "--rule2", "0.4"])
    assert json.loads(out.read_text())["variants"] == result["variants"]
    assert bench.main(["--summarise", str(out)])["variants"] == result["variants"]
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [("base", 0), ("base", 1), ("other", 0), ("other", 1)]
    for variant, summary in result["variants"].items():
        runs = [r["numbers"] for r in result["runs"] if r["variant"] == variant]
        assert summary["vad endpointed"]["n"] == 2
        assert summary["vad endpointed"]["mean"] == pytest.approx(np.mean([r["vad endpointed"] for r in runs]))
        assert _finite(summary["vad WER"]["mean"])
    with pytest.raises(SystemExit, match="no trained run"):
        bench.main(["--grid-out", str(assets["root"] / "nothing")])


def test_cli_startup_benchmark(tmp_path):
    """benchmarks/cli_startup.py: every command runs (with the exit status it expects) and the
    JSON holds a finite median of each measure; then --render reads that JSON back."""
    bench = _load("cli_startup")
    out = tmp_path / "cli.json"
    bench.main(["--repeats", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["command"] for r in rows] == [label for label, _, _ in bench.COMMANDS]
    assert all(_finite(r[k]["median"]) for r in rows for k in ("wall_s", "cpu_s", "rss_mb"))
    assert bench.main(["--render", str(out)])["rows"] == rows


def test_speaker_turns_cost_benchmark():
    r = _load("speaker_turns_cost").main(["--random-model", "--streams", "2", "--seconds", "2", "--repeats", "1"])
    c = r["cpu_s_per_audio_s"]
    assert r["backend"] == "torch-traced" and _finite(r["ratio_median"])
    assert len(c["plain"]) == len(c["speaker_turns"]) == 1 and min(c["plain"] + c["speaker_turns"]) > 0


def test_left_context_benchmark(assets):
    bench = _load("left_context")
    out = assets["root"] / "left.json"
    bench.main(["--model", str(assets["ckpt"]), "--manifest", str(assets["manifest"]), "--left-chunks", "1", "2",
                "--reference", "2", "--join", "2", "--batch", "2", "--repeats", "2", "--steps", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = {r["left_chunks"]: r for r in result["rows"]}
    assert set(rows) == {1, 2} and rows[2]["step_time_vs_reference"] == 1.0
    assert result["utterances"] == 2 and result["streams"] == 1
    for shape in ("utterances", "continuous"):
        assert "ci" not in rows[2][shape]  # the reference is not compared with itself
        low, high = rows[1][shape]["ci"]
        assert low <= rows[1][shape]["delta_wer"] <= high
    # the rule: left 1 is chosen only if both upper bounds are within the margin
    within = all(rows[1][s]["ci"][1] <= result["settings"]["margin"] for s in ("utterances", "continuous"))
    assert result["choice"] == (1 if within else 2)
    assert all(len(r["step_ms_repeats"]) == 2 and r["step_ms"] > 0 for r in rows.values())


def test_beam_threshold_benchmark(assets):
    bench = _load("beam_threshold")
    out = assets["root"] / "beam.json"
    bench.main(["--model", str(assets["ckpt"]), "--manifest", str(assets["manifest"]), "--lm", "none",
                "--thresholds", "50", "2", "--repeats", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = {r["threshold"]: r for r in result["rows"]}
    assert set(rows) == {50, 2} and rows[50]["cpu_vs_reference"] == 1.0 and "ci" not in rows[50]
    assert result["settings"]["decoder"] == "beam" and result["utterances"] == 2 and result["frames"] > 0
    assert rows[50]["identical_to_reference"] == 2 and 0 <= rows[2]["identical_to_reference"] <= 2
    low, high = rows[2]["ci"]
    assert low <= rows[2]["delta_wer"] <= high
    # the rule: threshold 2 is chosen only if its upper bound is within the margin
    assert result["choice"] == (2 if high <= result["settings"]["margin"] else 50)
    assert all(len(r["cpu_us_per_frame_repeats"]) == 2 and r["cpu_us_per_frame"] > 0 for r in rows.values())
