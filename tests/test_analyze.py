"""`mtspeech analyze`: word accuracy by training-sentence count, on hand-made files (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtspeech.analyze import (
    AnalysisError, Column, bucket_of, correct_reference_words, sentence_counts, vocabulary_accuracy,
    word_accuracy_by_frequency,
)
from mtspeech.cli import main as cli_main

# Training sentences: "THE" is in 4 distinct sentences (the repeated one counts once), "CAT"
# in 2 ("cat," normalizes to CAT), "DOG" in 1, "SAT" in 1 ... "ZEBRA" in none.
TRAIN = ["THE CAT SAT", "the cat, sat", "THE CAT RAN", "THE DOG", "THE END"]
TEST = {"u1": "THE CAT SAT", "u2": "THE DOG ZEBRA"}
# Greedy: u1 misspells CAT; u2 drops DOG. Trigram: all right but inserts a word in u2.
# Phones: u1 substitutes SAT; u2 is empty.
GREEDY = {"u1": "THE KAT SAT", "u2": "THE ZEBRA"}
TRIGRAM = {"u1": "THE CAT SAT", "u2": "THE BIG DOG ZEBRA"}
PHONES = {"u1": "THE CAT SET", "u2": ""}


def _manifest(path: Path, texts: dict[str, str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for utt_id, text in texts.items():
            f.write(json.dumps({"id": utt_id, "audio": f"{utt_id}.flac", "duration": 1.0, "text": text}) + "\n")
    return path


def _eval_folder(folder: Path, asr: dict[str, str], phone_words: dict[str, str] | None = None) -> Path:
    """A hypotheses.jsonl shaped like `mtspeech evaluate`'s (only the fields analyze reads)."""
    folder.mkdir()
    with open(folder / "hypotheses.jsonl", "w", encoding="utf-8") as f:
        for utt_id, hyp in asr.items():
            row = {"id": utt_id, "asr": {"hyp": hyp, "ref": TEST[utt_id]}}
            if phone_words is not None:
                row["phones"] = {"hyp": [], "words": phone_words[utt_id]}
            f.write(json.dumps(row) + "\n")
    return folder


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    train = _manifest(tmp_path / "train.jsonl", {f"t{i}": t for i, t in enumerate(TRAIN)})
    test = _manifest(tmp_path / "test.jsonl", TEST)
    return {"train": train, "test": test, "greedy": _eval_folder(tmp_path / "eval", GREEDY),
            "lm": _eval_folder(tmp_path / "eval-lm", TRIGRAM, PHONES)}


def _columns(files) -> list[Column]:
    lm = files["lm"] / "hypotheses.jsonl"
    return [Column("greedy", files["greedy"] / "hypotheses.jsonl", "asr", "hyp"),
            Column("trigram", lm, "asr", "hyp"), Column("phones", lm, "phones", "words")]


def test_sentence_counts_count_distinct_normalized_sentences():
    counts = sentence_counts(TRAIN)
    assert (counts["THE"], counts["CAT"], counts["SAT"], counts["DOG"], counts["ZEBRA"]) == (4, 2, 1, 1, 0)


def test_buckets_follow_the_readme_rows():
    assert [bucket_of(n) for n in (0, 1, 2, 3, 4, 10, 11, 500)] == ["0", "1", "2–3", "2–3", "4–10", "4–10",
                                                                   "more", "more"]


def test_alignment_marks_only_equal_reference_words_correct():
    assert correct_reference_words("THE DOG ZEBRA", "THE BIG DOG ZEBRA") == [("THE", True), ("DOG", True),
                                                                             ("ZEBRA", True)]
    assert correct_reference_words("THE DOG ZEBRA", "THE ZEBRA") == [("THE", True), ("DOG", False), ("ZEBRA", True)]
    assert correct_reference_words("THE DOG", "") == [("THE", False), ("DOG", False)]


def test_table_equals_a_hand_count(files):
    result = word_accuracy_by_frequency(files["train"], files["test"], _columns(files))
    rows = {b["bucket"]: b for b in result["buckets"]}
    # Reference words: THE×2 (count 4), CAT (2), SAT (1), DOG (1), ZEBRA (0).
    assert {k: r["words"] for k, r in rows.items()} == {"0": 1, "1": 2, "2–3": 1, "4–10": 2, "more": 0}
    assert rows["more"]["accuracy"]["greedy"] is None  # an empty bucket has no accuracy, not 0
    # greedy: THE THE right, KAT wrong, SAT right, DOG deleted, ZEBRA right
    assert {k: r["correct"]["greedy"] for k, r in rows.items()} == {"0": 1, "1": 1, "2–3": 0, "4–10": 2, "more": 0}
    # trigram: every reference word right (the inserted BIG belongs to none)
    assert {k: r["correct"]["trigram"] for k, r in rows.items()} == {"0": 1, "1": 2, "2–3": 1, "4–10": 2, "more": 0}
    # phones: u1 THE CAT right, SAT wrong; u2 empty, all wrong
    assert {k: r["correct"]["phones"] for k, r in rows.items()} == {"0": 0, "1": 0, "2–3": 1, "4–10": 1, "more": 0}
    assert rows["1"]["accuracy"]["greedy"] == pytest.approx(0.5)
    assert rows["4–10"]["accuracy"]["phones"] == pytest.approx(0.5)
    assert result["train_sentences"] == 4 and result["utterances"] == 2
    # IV: THE THE CAT SAT DOG (5 words); OOV: ZEBRA alone
    iv, oov = result["vocabulary"]["in"], result["vocabulary"]["out"]
    assert (iv["words"], oov["words"]) == (5, 1)
    assert iv["correct"] == {"greedy": 3, "trigram": 5, "phones": 2}
    assert oov["correct"] == {"greedy": 1, "trigram": 1, "phones": 0}
    assert iv["accuracy"]["greedy"] == pytest.approx(0.6) and oov["accuracy"]["phones"] == 0.0


def test_vocabulary_accuracy_splits_reference_words_by_training_presence():
    counts = sentence_counts(TRAIN)
    result = vocabulary_accuracy(counts, [("THE DOG ZEBRA", "THE ZEBRA"), ("ZEBRA CAT", "ZEBRA KAT")])
    # IV: THE (right), DOG (deleted), CAT (substituted); OOV: ZEBRA twice, both right
    assert result == {"in": {"words": 3, "correct": 1, "accuracy": pytest.approx(1 / 3)},
                      "out": {"words": 2, "correct": 2, "accuracy": 1.0}}
    # no OOV word: accuracy None, not 0 (nothing to be right or wrong about)
    assert vocabulary_accuracy(counts, [("THE CAT", "THE CAT")])["out"] == {"words": 0, "correct": 0, "accuracy": None}


def test_cli_prints_the_table_and_writes_json(files, tmp_path, capsys):
    out = tmp_path / "table.json"
    status = cli_main(["analyze", "--train", str(files["train"]), "--manifest", str(files["test"]),
                       "--greedy", str(files["greedy"]), "--lm", str(files["lm"]), "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| word in … training sentences | words | ASR greedy | ASR + trigram | phones → words |" in printed
    assert "| 1 | 2 | 50 % | 100 % | 0 % |" in printed
    assert "| in (IV) | 5 | 60 % (3) | 100 % (5) | 40 % (2) |" in printed
    assert "| not in (OOV) | 1 | 100 % (1) | 100 % (1) | 0 % (0) |" in printed
    saved = json.loads(out.read_text())
    assert [c["label"] for c in saved["columns"]] == ["ASR greedy", "ASR + trigram", "phones → words"]


def test_missing_hypotheses_folder_is_a_clear_error(files, tmp_path, caplog):
    status = cli_main(["analyze", "--train", str(files["train"]), "--manifest", str(files["test"]),
                       "--greedy", str(tmp_path / "nowhere")])
    assert status == 2
    assert "nowhere: no such hypotheses file or evaluation folder" in caplog.text


def test_missing_manifest_is_a_clear_error(files, tmp_path):
    with pytest.raises(AnalysisError, match="no such training manifest"):
        word_accuracy_by_frequency(tmp_path / "absent.jsonl", files["test"], _columns(files))


def test_missing_utterance_or_field_is_a_clear_error(files, tmp_path):
    partial = _eval_folder(tmp_path / "partial", {"u1": "THE CAT SAT"})
    with pytest.raises(AnalysisError, match="no hypothesis for 1 utterance.*first: u2"):
        word_accuracy_by_frequency(files["train"], files["test"],
                                   [Column("greedy", partial / "hypotheses.jsonl", "asr", "hyp")])
    # a greedy folder has no phone-decoded words
    with pytest.raises(AnalysisError, match=r"no text at phones.words"):
        word_accuracy_by_frequency(files["train"], files["test"],
                                   [Column("phones", files["greedy"] / "hypotheses.jsonl", "phones", "words")])


def test_several_training_manifests_count_as_one(files, tmp_path, capsys):
    """`--train A B` (what the model trained on, like `data.train` as a list) counts the
    sentences of both: the table equals the one from a single manifest holding them all."""
    first = _manifest(tmp_path / "train-a.jsonl", {f"t{i}": t for i, t in enumerate(TRAIN[:2])})
    second = _manifest(tmp_path / "train-b.jsonl", {f"t{i}": t for i, t in enumerate(TRAIN) if i >= 2})
    whole = word_accuracy_by_frequency(files["train"], files["test"], _columns(files))
    split = word_accuracy_by_frequency([first, second], files["test"], _columns(files))
    assert split["buckets"] == whole["buckets"] and split["train_sentences"] == whole["train_sentences"] == 4
    assert split["train_manifest"] == [str(first), str(second)]
    out = tmp_path / "table.json"
    assert cli_main(["analyze", "--train", str(first), str(second), "--manifest", str(files["test"]),
                     "--greedy", str(files["greedy"]), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["buckets"][0]["words"] == whole["buckets"][0]["words"]
    with pytest.raises(AnalysisError, match="absent.jsonl: no such training manifest"):
        word_accuracy_by_frequency([first, tmp_path / "absent.jsonl"], files["test"], _columns(files))
