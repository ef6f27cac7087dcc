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
    u = r["utterance_only"]
    assert u["ci_low"] == pytest.approx(0.10) and u["ci_high"] == pytest.approx(0.10)
    assert r["utterances"] == 50 and r["seeds"] == 1
    assert r["seed_aware"] is None  # one seed: nothing about the training noise


def test_compare_ci_includes_zero_for_equal_models(tmp_path):
    _write_eval(tmp_path / "a", [0, 2, 1, 3] * 10)
    _write_eval(tmp_path / "b", [2, 0, 3, 1] * 10)  # same total, errors moved between utterances
    r = compare(tmp_path / "a", tmp_path / "b", metric="cer")
    assert r["delta"] == pytest.approx(0.0)
    assert r["utterance_only"]["ci_low"] < 0 < r["utterance_only"]["ci_high"]


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
    assert "asr/cer: plain 5.0 %, aug 5.0 %, Δ +0.0 points; utterances only, seeds fixed" in printed
    assert "no verdict (1 seed < 3)" in printed and "asr/wer" in printed
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


def test_compare_over_seed_pairs_reads_the_training_noise(tmp_path, capsys):
    """Three seeds in one direction but far apart: the utterances alone are sure, the seeds not."""
    folders = []
    for seed, (a, b) in enumerate([(5, 4), (19, 4), (7, 4)]):  # B better by 1, 15 and 3 errors of 20
        _write_eval(tmp_path / f"a{seed}", [a] * 40)
        _write_eval(tmp_path / f"b{seed}", [b] * 40)
        folders += [str(tmp_path / f"a{seed}"), str(tmp_path / f"b{seed}")]
    out = tmp_path / "cmp.json"
    assert main(["compare", *folders, "--metric", "cer", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["seeds"] == 3 and list(r["per_seed"].values()) == pytest.approx([-0.05, -0.75, -0.15])
    assert r["utterance_only"]["ci_high"] < 0
    assert r["seed_aware"]["ci_low"] < 0 < r["seed_aware"]["ci_high"]
    assert r["verdict"] == "no detectable effect at 3 seeds"
    assert "over seeds [" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="pairs"):
        main(["compare", *folders[:3]])
