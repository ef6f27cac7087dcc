"""The results pages under docs/results/ are rendered from their committed JSON, never typed:
re-rendering every page gives the committed text, and a hand-edited number is caught."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _render_results():
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "scripts" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks the module up while the class is built
    spec.loader.exec_module(module)
    return module


render_results = _render_results()


def test_every_results_page_is_what_its_json_renders_to():
    stale = render_results.check()
    assert not stale, f"re-render with `python scripts/render_results.py`: {[str(p) for p in stale]}"


def test_a_number_edited_by_hand_or_a_json_changed_without_re_rendering_is_caught(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", results)
    assert render_results.check(results) == []
    page = results / "pocketsphinx" / "README.md"
    clean = page.read_text()
    assert "| 33.6 % |" in clean  # the test-engine row of the committed PocketSphinx table
    page.write_text(clean.replace("| 33.6 % |", "| 23.6 % |"))  # a "better" WER typed in
    assert render_results.check(results) == [page]

    page.write_text(clean)  # the page as rendered, but its JSON changed since
    measured = results / "pocketsphinx" / "synthetic-seed0.json"
    text = measured.read_text()
    assert '"wer": 0.3364' in text
    measured.write_text(text.replace('"wer": 0.3364', '"wer": 0.2364', 1))
    assert render_results.check(results) == [page]
    assert main_exit_code(results) == 1


def test_a_load_run_with_feature_sets_shows_its_cost_rows_on_the_server_load_page(tmp_path):
    """When a `server_load.py --features plain,diarization+hotwords100` JSON is committed, the
    server-load page shows each set's CPU per audio second and its ratio to plain."""
    from bench_module import load_benchmark

    cost_rows = load_benchmark("_server_load_features").cost_rows
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", results)
    for committed in (results / "server-load").glob("features-*.json"):  # only the made-up run below
        committed.unlink()
    run = json.loads((results / "server-load" / "default-continuous-2cores.json").read_text())
    plain = [lv | {"features": "plain"} for lv in run["levels"]]
    featured = [lv | {"features": "diarization+hotwords100", "rtf_cpu": round(1.25 * lv["rtf_cpu"], 6)}
                for lv in run["levels"]]  # a quarter more CPU per audio second, in every repeat
    sets = [{"name": "plain", "speakers": False, "hotwords": []},
            {"name": "diarization+hotwords100", "speakers": True, "hotwords": ["WORD"] * 100}]
    run.pop("backends", None)
    run |= {"levels": plain, "feature_levels": featured, "feature_sets": sets,
            "feature_costs": cost_rows(plain + featured)}
    (results / "server-load" / "features-2cores.json").write_text(json.dumps(run))
    page = results / "server-load" / "README.md"
    assert render_results.check(results) == [page]  # a new JSON: the page must be rendered again
    assert main_exit_code(results) == 1
    assert render_results.main(["--results-dir", str(results)]) == 0
    text = page.read_text()
    assert "cost per feature set" in text and "diarization+hotwords100: speaker turns, 100 hotwords" in text
    rows = [line for line in text.splitlines() if line.startswith("diarization+hotwords100 ")]
    assert len(rows) == len({lv["streams"] for lv in plain}) and all(" 1.25x [1.25, 1.25] " in r for r in rows)
    assert render_results.check(results) == []


def main_exit_code(results: Path) -> int:
    return render_results.main(["--check", "--results-dir", str(results)])


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_results():
    return _script("demo_results")


def test_the_readme_results_and_recipe_results_are_what_the_demo_json_renders_to(tmp_path, monkeypatch):
    demo = _demo_results()
    assert demo.main(["check"]) == 0, "re-render with `python scripts/demo_results.py render`"
    # a CER typed into the README's block by hand is caught
    readme = tmp_path / "README.md"
    text = demo.README.read_text(encoding="utf-8")
    block = text.split(demo.BEGIN, 1)[1].split(demo.END, 1)[0]
    first_rate = block.split("| ")[8].split(" [")[0]  # the first row's greedy CER
    readme.write_text(text.replace(f"| {first_rate} [", "| 1.0 [", 1), encoding="utf-8")
    monkeypatch.setattr(demo, "README", readme)
    monkeypatch.setattr(demo, "RESULTS_MD", demo.RESULTS_MD)
    assert first_rate != "1.0" and demo.main(["check"]) == 1


def test_the_two_commands_time_and_disk_are_measured_into_json_and_rendered(tmp_path, monkeypatch):
    costs = _script("command_costs")
    assert costs.main(["check"]) == 0, "re-render with `python scripts/command_costs.py render`"
    clone = tmp_path / "clone"
    (clone / "data").mkdir(parents=True)
    readme = clone / "README.md"
    readme.write_text(f"# x\n{costs.BEGIN}\n{costs.END}\n", encoding="utf-8")
    for name, value in (("ROOT", clone), ("OUT", clone / "results"), ("README", readme)):
        monkeypatch.setattr(costs, name, value)
    grow = "open('data/blob', 'wb').write(b'x' * 3_000_000)"
    assert costs.main(["measure", "tests", "--", sys.executable, "-c", grow]) == 0
    measured = json.loads((clone / "results" / "tests.json").read_text())
    assert measured["fresh_clone"] is True and measured["seconds"] >= 0
    assert measured["disk_added_bytes"] >= 3_000_000 and measured["parts_bytes"]["data"] >= 3_000_000
    # a failing command writes nothing
    assert costs.main(["measure", "main", "--", sys.executable, "-c", "raise SystemExit(3)"]) == 1
    assert not (clone / "results" / "main.json").exists()
    assert costs.main(["check"]) == 1  # the README block was not rendered yet
    assert costs.main(["render"]) == 0 and costs.main(["check"]) == 0
    block = readme.read_text().split(costs.BEGIN)[1]
    assert "`bash scripts/test.sh`: 0 min on" in block and "not measured yet" in block  # main: none
    assert measured["steps_seconds"] is None  # no run.sh timing log in this clone


def test_run_sh_steps_are_timed_from_its_own_log(tmp_path):
    costs = _script("command_costs")
    log = tmp_path / "run-steps.jsonl"
    old = [{"step": "setup", "at": 100}, {"step": "synthesize", "at": 160}]  # an earlier, broken run
    new = [{"step": "setup", "at": 1000}, {"step": "synthesize", "at": 1030}, {"step": "train", "at": 1630},
           {"step": "done", "at": 1700}]
    log.write_text("\n".join(json.dumps(m) for m in old + new[:-1]) + "\n")
    assert costs.steps_from_log(log, 999.5) is None  # not finished
    log.write_text("\n".join(json.dumps(m) for m in old + new) + "\n")
    assert costs.steps_from_log(log, 999.5) == {"setup": 30.0, "synthesize": 600.0, "train": 70.0}
    assert costs.steps_from_log(tmp_path / "missing.jsonl", 0) is None
