"""benchmarks/demo_goals.py: issue 14's goals (and issue 35's telephone goal) per seed and over
seeds, from `run.sh`'s outputs."""

import json
from pathlib import Path

import pytest
from bench_module import load_benchmark

from mtspeech.cli import main as cli


@pytest.fixture(scope="module")
def demo_goals():
    return load_benchmark("demo_goals")


def _eval(folder: Path, char_errors: list[int], ref_chars: int = 50) -> None:
    folder.mkdir(parents=True)
    rows = [{"id": f"u{i}", "asr": {"char_errors": e, "ref_chars": ref_chars, "errors": 0, "ref_words": 9}}
            for i, e in enumerate(char_errors)]
    (folder / "hypotheses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _seed(root: Path, name: str, plain: list[int], demo: list[int], demo_snr10: list[int],
          demo_phone: list[int] | None = None) -> Path:
    """One seed's evaluation folders and `compare-plain` JSON, the way run.sh lays them out
    (test-phone only when `demo_phone` is given, as before the telephone twins)."""
    exp, base = root / f"all-{name}", root / f"plain-{name}"
    _eval(base / "eval-test", plain)
    _eval(exp / "eval-test", demo)
    _eval(base / "eval-test-snr10", [e * 3 for e in plain])
    _eval(exp / "eval-test-snr10", demo_snr10)
    splits = ["test", "test-snr10"]
    if demo_phone is not None:
        _eval(base / "eval-test-phone", [e * 4 for e in plain])
        _eval(exp / "eval-test-phone", demo_phone)
        splits.append("test-phone")
    for split in splits:
        assert cli(["compare", str(base / f"eval-{split}"), str(exp / f"eval-{split}"), "--metric", "cer",
                    "--json", str(exp / "compare-plain" / f"{split}.json")]) == 0
    # what run.sh's compare JSON names: the folders relative to the clone it ran in
    for f in (exp / "compare-plain").glob("*.json"):
        spec = json.loads(f.read_text())
        spec["a"], spec["b"] = ([str(Path(x).relative_to(root)) for x in spec[k]] for k in ("a", "b"))
        f.write_text(json.dumps(spec))
    return exp / "compare-plain"


def _peers(path: Path, head_f1: float, head_eer: float) -> Path:
    path.write_text(json.dumps({
        "vad": {s: {"head": {"f1": head_f1}, "silero": {"f1": 0.95}} for s in ("test", "test-snr10")},
        "speaker": {s: {"head": {"eer": head_eer}, "resemblyzer": {"eer": 0.16}}
                    for s in ("test-unseen", "test-unseen-snr10")}}))
    return path


def test_goals_per_seed_and_on_the_mean(tmp_path, demo_goals):
    n = 40
    # seed a: the demo 1 character worse in 10 of 40 utterances (+0.5 points); seed b: 1 better in 10 (−0.5)
    a = _seed(tmp_path, "a", [5] * n, [6] * 10 + [5] * 30, [12] * n)  # 10 dB: 12/5.25 = 2.29 x clean
    b = _seed(tmp_path, "b", [5] * n, [4] * 10 + [5] * 30, [6] * n)   # 6/4.75 = 1.26 x clean
    pa, pb = _peers(tmp_path / "pa.json", 0.96, 0.10), _peers(tmp_path / "pb.json", 0.93, 0.20)
    r = demo_goals.main(["--compare", str(a), str(b), "--peers", str(pa), str(pb), "--root", str(tmp_path),
                         "--out", str(tmp_path / "goals.json")])

    sa, sb = r["seeds"]
    assert sa["clean_cost"] == pytest.approx(10 / (n * 50)) and sb["clean_cost"] == pytest.approx(-10 / (n * 50))
    assert sa["noise_ratio"] == pytest.approx(12 / 5.25) and sb["noise_ratio"] == pytest.approx(6 / 4.75)
    assert r["pooled_noise_ratio"] == pytest.approx((12 + 6) / (5.25 + 4.75))
    goals = {g["key"]: g for g in r["goals"]}
    assert goals["clean_cost"]["met_per_seed"] == [True, True]  # +0.5 is within the budget
    assert goals["clean_cost"]["mean"] == pytest.approx(0.0)
    assert goals["noise_ratio"]["met_per_seed"] == [False, True]
    assert goals["vad_margin_min"]["met_per_seed"] == [True, False] and not goals["vad_margin_min"]["met_on_mean"]
    assert goals["eer_margin/test-unseen"]["per_seed"] == pytest.approx([-0.06, 0.04])
    assert goals["eer_margin/test-unseen"]["met_on_mean"]  # mean −0.01
    # over the seeds, on the same utterances: the mean of the seeds' costs, a seed-aware interval
    pooled = r["pooled_clean_cost"]
    assert pooled["delta"] == pytest.approx(0.0) and pooled["utterances"] == n and pooled["seeds"] == 2
    assert pooled["ci"][0] <= 0 <= pooled["ci"][1] and pooled["level"].startswith("seeds+utterances")
    assert pooled["verdict"] == "no verdict (2 seeds < 3)"
    assert json.loads((tmp_path / "goals.json").read_text())["goals"][0]["key"] == "clean_cost"


def test_without_the_evaluation_folders_the_cost_uses_the_committed_intervals(tmp_path, demo_goals, capsys):
    a = _seed(tmp_path, "a", [5] * 20, [6] * 20, [9] * 20)
    r = demo_goals.main(["--compare", str(a), "--root", str(tmp_path / "elsewhere")])
    pooled = r["pooled_clean_cost"]
    assert pooled["ci"] == [None, None] and pooled["verdict"] == "no verdict (1 seed < 3)"
    assert r["seeds"][0]["vad_margin_min"] is None  # no peers result given
    out = capsys.readouterr().out
    assert "| clean cost ≤ 0.5 CER points | +2.0 ✗ |" in out and "Clean cost, one seed: +2.00 points" in out
    three = [_seed(tmp_path, k, [5] * 20, [5 + d] * 20, [9] * 20) for k, d in (("b", 1), ("c", 0), ("d", 2))]
    r = demo_goals.main(["--compare", *map(str, three), "--root", str(tmp_path / "elsewhere")])
    assert r["pooled_clean_cost"]["level"].startswith("seeds + the seeds' mean utterance")
    assert r["pooled_clean_cost"]["ci"][0] < r["pooled_clean_cost"]["delta"] < r["pooled_clean_cost"]["ci"][1]


def test_peers_files_must_match_the_seeds(tmp_path, demo_goals):
    a = _seed(tmp_path, "a", [5] * 20, [6] * 20, [9] * 20)
    with pytest.raises(SystemExit, match="2 files for 1"):
        demo_goals.main(["--compare", str(a), "--peers", str(_peers(tmp_path / "p.json", 0.9, 0.1)),
                         str(tmp_path / "p.json")])
    with pytest.raises(SystemExit, match="test.json: not found"):
        demo_goals.main(["--compare", str(tmp_path / "no-such-run")])


def test_the_telephone_goal_per_seed_and_on_the_mean_when_run_sh_scored_test_phone(tmp_path, demo_goals, capsys):
    n = 20
    a = _seed(tmp_path, "a", [5] * n, [5] * n, [6] * n, demo_phone=[7] * n)  # 7/5 = 1.4 x clean
    b = _seed(tmp_path, "b", [5] * n, [4] * n, [6] * n, demo_phone=[8] * n)  # 8/4 = 2.0 x clean
    r = demo_goals.main(["--compare", str(a), str(b), "--root", str(tmp_path)])
    goal = {g["key"]: g for g in r["goals"]}["phone_ratio"]
    assert goal["per_seed"] == pytest.approx([1.4, 2.0]) and goal["met_per_seed"] == [True, False]
    assert goal["mean"] == pytest.approx(1.7) and not goal["met_on_mean"]
    assert r["pooled_phone_ratio"] == pytest.approx(15 / 9)
    out = capsys.readouterr().out
    assert "| telephone CER ≤ 1.5 × clean (issue 35) | 1.40 ✓ | 2.00 ✗ | 1.70 [" in out
    # a seed run before the twins existed has no test-phone comparison: no row, no pooled ratio
    old = _seed(tmp_path, "old", [5] * n, [5] * n, [6] * n)
    r = demo_goals.main(["--compare", str(old), "--root", str(tmp_path)])
    assert r["seeds"][0]["phone_ratio"] is None and r["pooled_phone_ratio"] is None
    out = capsys.readouterr().out
    assert "telephone CER" not in out and "Telephone over clean" not in out
