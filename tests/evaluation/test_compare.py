"""`mtspeech compare`: paired bootstrap of two evaluation folders on the same utterances."""

import json

import pytest

from mtspeech.cli import main
from mtspeech.evaluation.compare import CompareError, compare


def _write_eval(folder, char_errors, ref_chars=20):
    folder.mkdir(parents=True)
    with open(folder / "hypotheses.jsonl", "w") as f:
        for i, e in enumerate(char_errors):
            f.write(json.dumps({"id": f"u{i}", "asr": {"char_errors": e, "ref_chars": ref_chars,
                                                       "errors": min(e, 4), "ref_words": 4}}) + "\n")


def test_compare_reads_difference_and_interval(tmp_path):
    _write_eval(tmp_path / "a", [1] * 50)
    _write_eval(tmp_path / "b", [3] * 50)  # 2 more character errors in every utterance
    r = compare(tmp_path / "a", tmp_path / "b", metric="cer")
    assert r["a"] == pytest.approx(0.05) and r["b"] == pytest.approx(0.15)
    assert r["delta"] == pytest.approx(0.10)
    assert r["ci_low"] == pytest.approx(0.10) and r["ci_high"] == pytest.approx(0.10)
    assert r["utterances"] == 50


def test_compare_ci_includes_zero_for_equal_models(tmp_path):
    _write_eval(tmp_path / "a", [0, 2, 1, 3] * 10)
    _write_eval(tmp_path / "b", [2, 0, 3, 1] * 10)  # same total, errors moved between utterances
    r = compare(tmp_path / "a", tmp_path / "b", metric="cer")
    assert r["delta"] == pytest.approx(0.0)
    assert r["ci_low"] < 0 < r["ci_high"]


def test_compare_rejects_other_manifest_and_missing_folder(tmp_path):
    _write_eval(tmp_path / "a", [1] * 5, ref_chars=20)
    _write_eval(tmp_path / "b", [1] * 5, ref_chars=21)
    with pytest.raises(CompareError, match="reference lengths differ"):
        compare(tmp_path / "a", tmp_path / "b")
    with pytest.raises(CompareError, match="not found"):
        compare(tmp_path / "a", tmp_path / "nowhere")


def test_compare_command_prints_and_writes_json(tmp_path, capsys):
    _write_eval(tmp_path / "plain", [1] * 30)
    _write_eval(tmp_path / "aug", [1] * 30)
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "plain"), str(tmp_path / "aug"), "--labels", "plain", "aug",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "asr/cer: plain 5.0 %, aug 5.0 %, Δ +0.0 points" in printed
    assert "asr/wer" in printed
    assert [r["metric"] for r in json.loads(out.read_text())["results"]] == ["cer", "wer"]


def test_compare_reads_the_phone_heads_words_not_its_phones(tmp_path):
    for name, word_errors in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        rows = [{"id": f"u{i}", "phones": {"errors": 7, "ref_len": 30, "word_errors": word_errors,
                                           "ref_words": 5, "char_errors": 0, "ref_chars": 25}}
                for i in range(10)]
        (tmp_path / name / "hypotheses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    wer = compare(tmp_path / "a", tmp_path / "b", task="phones", metric="wer")
    assert (wer["a"], wer["b"]) == (pytest.approx(0.2), pytest.approx(0.4))
    per = compare(tmp_path / "a", tmp_path / "b", task="phones", metric="per")
    assert per["a"] == pytest.approx(7 / 30) and per["delta"] == 0
