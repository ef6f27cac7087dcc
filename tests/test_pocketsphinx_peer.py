"""benchmarks/pocketsphinx_peer.py's scoring, provenance and rendering on hand-made inputs
(pocketsphinx itself is not needed: decoding is the only part that calls it)."""

import json

import pytest
from bench_module import load_benchmark

from mtspeech.analyze import sentence_counts

peer = load_benchmark("pocketsphinx_peer")

TRAIN = sentence_counts(["THE CAT SAT", "A DOG RAN"])
# Speaker a: PocketSphinx's lower-case, punctuated output scores as the reference does (0 errors
# in 3 words); speaker b: ZEBRA (no training sentence has it) substituted, RAN deleted.
REFS = ["THE CAT SAT", "THE CAT SAT", "A ZEBRA RAN", "THE DOG RAN"]
HYPS = ["the cat, sat.", "The Cat Sat", "a zebu", "the dog ran"]
SPEAKERS = ["a", "a", "b", "b"]


def test_score_split_uses_the_project_normalisation_and_counts_iv_oov():
    r = peer.score_split(REFS, HYPS, SPEAKERS, TRAIN, samples=500)
    assert (r["utterances"], r["speakers"], r["words"]) == (4, 2, 12)
    assert (r["substitutions"], r["deletions"], r["insertions"]) == (1, 1, 0)
    assert r["wer"] == pytest.approx(2 / 12, abs=1e-4)
    # IV: 11 words, RAN of utterance 3 deleted; OOV: ZEBRA, substituted
    assert r["vocabulary"]["in"] == {"words": 11, "correct": 10, "accuracy": pytest.approx(10 / 11)}
    assert r["vocabulary"]["out"] == {"words": 1, "correct": 0, "accuracy": 0.0}


def test_the_interval_is_over_speakers():
    """Two speakers: a draw is aa (0 %), ab (2/12) or bb (2/6), a quarter each for aa and bb,
    so the 95 % interval is exactly [0, 1/3]; an utterance bootstrap would be narrower."""
    r = peer.score_split(REFS, HYPS, SPEAKERS, TRAIN, samples=2000)
    assert r["wer_ci95_speakers"] == [0.0, pytest.approx(1 / 3, abs=1e-4)]
    one_speaker = peer.score_split(REFS, HYPS, ["a"] * 4, TRAIN, samples=200)
    assert one_speaker["wer_ci95_speakers"] == [one_speaker["wer"]] * 2  # one voice: nothing to resample


def test_corpus_provenance_names_the_synthesis_config_and_manifests(tmp_path):
    corpus = tmp_path / "somewhere"
    corpus.mkdir()
    (corpus / "synth.json").write_text(json.dumps({"config": {"seed": 7, "hours": 0.2}, "speakers": []}))
    (tmp_path / "summary.json").write_text(json.dumps({"root": str(corpus)}))
    (tmp_path / "test.jsonl").write_text("{}\n")
    out = peer.corpus_provenance(tmp_path, ["test"], "abc123")
    assert out["synth_config"] == {"seed": 7, "hours": 0.2} and out["commit"] == "abc123"
    assert len(out["manifests_sha256"]["test"]) == 64


def test_render_gives_one_row_per_split():
    split = peer.score_split(REFS, HYPS, SPEAKERS, TRAIN, samples=200)
    result = {"peer": "pocketsphinx 5.1.1, en-us defaults", "train": ["data/synthetic/train.jsonl"],
              "corpus": {"synth_config": {"seed": 0, "hours": 1.5}, "commit": "abc123"},
              "splits": {"test-engine": {**split, "rtf": 0.5}}, "elapsed_s": 3.0}
    text = peer.render(result)
    assert "synth seed 0, 1.5 h; synthesizer commit abc123" in text
    assert "| test-engine | 4 / 2 | 12 | 16.7 % | [0.0, 33.3] | 1 / 1 / 0 | 90.9 % (10 / 11) | 0.0 % (0 / 1) | 0.50 |" in text
