"""benchmarks/demo_table.py: the README's demo table from `run.sh`'s evaluation folders."""

import json
from pathlib import Path

import pytest
from bench_module import load_benchmark


@pytest.fixture(scope="module")
def demo_table():
    return load_benchmark("demo_table")


def _results(folder: Path, **metrics) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"metrics": {k.replace("_", "/"): v for k, v in metrics.items()}}))


def _exp(root: Path, name: str, demo_table, cer: float) -> Path:
    """Every folder the table reads: CER `cer` greedy, half of it through the phone head."""
    exp = root / name
    for split, about in demo_table.CLEAN + demo_table.TWINS:
        heads = {"phones_per": 0.1, "speaker_eer": 0.05, "vad_f1": 0.98, "vad_auc": 0.999}
        if split == "test":
            heads["speaker_accuracy"] = 0.95
        _results(exp / f"eval-{split}", asr_cer=cer, asr_wer=2 * cer, **heads)
        if (split, about) in demo_table.CLEAN:
            _results(exp / f"eval-{split}-lm", asr_cer=cer, asr_wer=cer, phones_cer=cer / 2, phones_wer=cer)
    return exp


def test_rows_name_each_decoder_and_the_plain_cer(demo_table, tmp_path, capsys):
    demo, plain = _exp(tmp_path, "all", demo_table, 0.1), _exp(tmp_path, "plain", demo_table, 0.2)
    out = tmp_path / "table.json"
    result = demo_table.run_main(demo_table.__doc__, demo_table.add_arguments, demo_table.run, demo_table.render,
                                 ["--exp", str(demo), "--plain", str(plain), "--out", str(out)])
    assert len(result["rows"]) == 3 * 3 + len(demo_table.TWINS)
    phones = [r for r in result["rows"] if r["decoder"] == demo_table.BEAM_PHONES and r["split"] == "test"][0]
    assert (phones["cer"], phones["plain_cer"]) == (0.05, 0.1)
    printed = capsys.readouterr().out
    assert ("| `test` (seen voices, new sentences) | ASR head, greedy | 10.0 % | 20.0 % | 10.0 % | 95.0 % | 5.0 % "
            "| 0.980 (0.9990) | 20.0 % |") in printed
    assert "| `test-unseen` (4 new voices) | ASR head, greedy | 10.0 % | 20.0 % | 10.0 % | — |" in printed
    assert json.loads(out.read_text())["rows"] == result["rows"]


def test_a_missing_folder_names_the_command_that_writes_it(demo_table, tmp_path):
    demo = _exp(tmp_path, "all", demo_table, 0.1)
    with pytest.raises(SystemExit, match="plain/eval-test/results.json: not found"):
        demo_table.run(demo_table.argparse.Namespace(exp=str(demo), plain=str(tmp_path / "plain")))
