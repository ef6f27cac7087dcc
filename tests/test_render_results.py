"""The results pages under docs/results/ are rendered from their committed JSON, never typed:
re-rendering every page gives the committed text, and a hand-edited number is caught."""

import importlib.util
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
    page = results / "streaming" / "README.md"
    clean = page.read_text()
    assert "greedy    17.04%" in clean  # the greedy row of the committed streaming table
    page.write_text(clean.replace("greedy    17.04%", "greedy    16.04%"))  # a "better" CER typed in
    assert render_results.check(results) == [page]

    page.write_text(clean)  # the page as rendered, but its JSON changed since
    measured = results / "streaming" / "demo-train-voices_test.json"
    text = measured.read_text()
    assert '"cer": 0.17037' in text
    measured.write_text(text.replace('"cer": 0.17037', '"cer": 0.16037', 1))
    assert render_results.check(results) == [page]
    assert main_exit_code(results) == 1


def main_exit_code(results: Path) -> int:
    return render_results.main(["--check", "--results-dir", str(results)])
