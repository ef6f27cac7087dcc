"""Evaluation of a tiny trained checkpoint: metrics against hand computations, beam vs greedy, errors."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch

from mtspeech import metrics as M
from mtspeech.checkpoint import load_model
from mtspeech.data.audio import load_audio
from mtspeech.data.manifest import read_manifest, write_manifest
from mtspeech.decoding.config import DecodingConfig, DecodingError
from mtspeech.evaluation.evaluate import EvaluationError, add_arguments, duration_batches, evaluate, main
from mtspeech.tasks.vad import frame_labels
from tiny_experiment import tiny_experiment


def tiny_overfit_config(manifests: dict, exp_dir: Path, epochs: int) -> dict:
    """2-layer, 32-dim, all four tasks; no augmentation so a few dozen epochs give real words."""
    return tiny_experiment(manifests, exp_dir, data={"max_batch_seconds": 5.0, "speed_perturb": None},
                           specaugment=None, optim={"lr": 5e-3},
                           train={"epochs": epochs, "log_every_steps": 5, "average_best": 1})


@pytest.fixture(scope="module")
def trained(prepared_manifests, tmp_path_factory) -> Path:
    """final.pt of a tiny model trained to emit (imperfect) words on the training set."""
    from mtspeech.experiment import experiment_from_dict
    from mtspeech.train import train

    exp_dir = tmp_path_factory.mktemp("eval_exp")
    train(experiment_from_dict(tiny_overfit_config(prepared_manifests, exp_dir, epochs=60)))
    return exp_dir / "final.pt"


@pytest.fixture(scope="module")
def mixed_manifest(prepared_manifests, tmp_path_factory) -> Path:
    """Training utterances (known speakers, some decoded words) + unseen speakers: every metric is defined."""
    utts = read_manifest(prepared_manifests["train"]) + read_manifest(prepared_manifests["test-unseen"])
    path = tmp_path_factory.mktemp("eval_manifest") / "mixed.jsonl"
    write_manifest(path, utts)
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _edit_distance(a: list, b: list) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def _eer_brute_force(scores: np.ndarray, labels: np.ndarray) -> float:
    best = None
    for t in list(np.unique(scores)) + [np.inf]:
        far = float((scores[labels == 0] >= t).mean())
        frr = float((scores[labels == 1] < t).mean())
        if best is None or abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2)
    return best[1]


@pytest.mark.slow
def test_metrics_match_hand_computation(trained, mixed_manifest, tmp_path):
    res = evaluate(trained, mixed_manifest, tmp_path / "ev", max_batch_seconds=8.0)
    rows = _read(tmp_path / "ev" / "hypotheses.jsonl")
    utts = read_manifest(mixed_manifest)
    assert [r["id"] for r in rows] == [u.id for u in utts]  # manifest order, every utterance
    m = res["metrics"]

    # ASR: jiwer directly on the written hypotheses (texts are already upper case, no punctuation)
    refs = [r["asr"]["ref"] for r in rows]
    hyps = [r["asr"]["hyp"] for r in rows]
    assert any(hyps), "the tiny model should emit some words"
    assert m["asr/wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert m["asr/wer"] == pytest.approx(sum(r["asr"]["errors"] for r in rows) / sum(r["asr"]["ref_words"] for r in rows))
    assert m["asr/cer"] == pytest.approx(jiwer.cer(refs, hyps))
    assert m["asr/cer"] == pytest.approx(sum(r["asr"]["char_errors"] for r in rows) / sum(r["asr"]["ref_chars"] for r in rows))
    # PER: our own edit distance over the written phone lists
    per = sum(_edit_distance(r["phones"]["ref"], r["phones"]["hyp"]) for r in rows) / sum(len(r["phones"]["ref"]) for r in rows)
    assert m["phones/per"] == pytest.approx(per)

    model, _, _ = load_model(trained)
    known = [r for r in rows if r["speaker"]["ref"] in model.tasks["speaker"].speakers]
    assert 0 < len(known) < len(rows)  # unseen speakers are left out of accuracy
    assert m["speaker/accuracy"] == pytest.approx(np.mean([r["speaker"]["predicted"] == r["speaker"]["ref"] for r in known]))

    # EER and VAD: recompute from a plain unbatched forward pass, all trial pairs
    emb, probs, labels = [], [], []
    with torch.no_grad():
        for u in utts:
            wav = load_audio(u.audio)
            enc = model.encode(wav[None], torch.tensor([len(wav)]))
            spk = model.tasks["speaker"]
            emb.append(torch.nn.functional.normalize(spk.embed(enc.layers[spk.layer], enc.lens), dim=-1)[0])
            vad = model.tasks["vad"]
            p = vad.speech_probs(vad(enc.layers[vad.layer], enc.lens))[0]
            n = min(int(enc.lens[0]), vad.collate([u]).lens.item())
            probs.append(p[:n].numpy())
            labels.append(frame_labels(u.speech, n).numpy())
    pairs = list(itertools.combinations(range(len(utts)), 2))
    scores = np.array([float(emb[i] @ emb[j]) for i, j in pairs])
    same = np.array([int(utts[i].speaker == utts[j].speaker) for i, j in pairs])
    assert m["speaker/eer"] == pytest.approx(_eer_brute_force(scores, same), abs=1e-6)
    p, y = np.concatenate(probs), np.concatenate(labels) > 0.5
    pred = p > vad.cfg.threshold
    tp = (pred & y).sum()
    assert m["vad/precision"] == pytest.approx(tp / pred.sum(), abs=1e-6)
    assert m["vad/recall"] == pytest.approx(tp / y.sum(), abs=1e-6)
    pos, neg = p[y], p[~y]
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert m["vad/auc"] == pytest.approx(auc, abs=1e-4)

    # word times: ordered, inside the utterance, spelling the hypothesis
    for r in rows:
        words = r["asr"]["words"]
        assert " ".join(w["word"] for w in words) == r["asr"]["hyp"]
        assert all(0 <= w["start"] < w["end"] <= r["duration"] + 0.1 for w in words)
        assert all(a["start"] <= b["start"] for a, b in zip(words, words[1:]))
    # worst utterances, results.json and the report agree
    on_disk = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert on_disk["metrics"] == res["metrics"]
    worst_errors = [w["errors"] for w in res["worst"]]
    assert worst_errors == sorted(worst_errors, reverse=True)
    assert worst_errors[0] == max(r["asr"]["errors"] for r in rows)
    assert "asr/wer" in (tmp_path / "ev" / "report.md").read_text()


@pytest.mark.slow
def test_beam_without_lm_never_scores_below_greedy(trained, prepared_manifests, tmp_path):
    greedy = evaluate(trained, prepared_manifests["train"], tmp_path / "greedy")
    beam = evaluate(trained, prepared_manifests["train"], tmp_path / "beam", DecodingConfig(decoder="beam", beam_size=8))
    g = {r["id"]: r["asr"] for r in _read(tmp_path / "greedy" / "hypotheses.jsonl")}
    b = {r["id"]: r["asr"] for r in _read(tmp_path / "beam" / "hypotheses.jsonl")}
    assert g.keys() == b.keys()
    for uid in g:  # the best-path score: beam keeps the greedy path, so it can only find a better one
        assert b[uid]["score"] >= g[uid]["score"] - 1e-3 * abs(g[uid]["score"]), uid
    assert beam["decoder"] == "beam" and greedy["decoder"] == "greedy"


@pytest.mark.slow
def test_beam_with_auto_lm_from_training_transcripts(trained, prepared_manifests, tmp_path):
    res = evaluate(trained, prepared_manifests["test"], tmp_path / "lm", DecodingConfig(decoder="beam", beam_size=8, lm="auto"))
    assert (tmp_path / "lm" / "lm.arpa").is_file()
    assert res["decoder_options"]["lm"].endswith("lm.arpa")
    train_words = {w for u in read_manifest(prepared_manifests["train"]) for w in (u.text or "").split()}
    rows = _read(tmp_path / "lm" / "hypotheses.jsonl")
    for r in rows:  # the lexicon closes the vocabulary, for pieces and for phones alike
        assert set(r["asr"]["hyp"].split()) <= train_words
        assert set(r["phones"]["words"].split()) <= train_words
    # Words found in the phone posteriors are scored like the ASR head's transcripts.
    refs = [r["asr"]["ref"] for r in rows]
    hyps = [r["phones"]["words"] for r in rows]
    assert res["metrics"]["phones/wer"] == pytest.approx(M.wer(refs, hyps).rate)
    assert res["metrics"]["phones/cer"] == pytest.approx(M.cer(refs, hyps).rate)
    c = res["counts"]["phones/wer"]
    assert sum(r["phones"]["word_errors"] for r in rows) == c["substitutions"] + c["deletions"] + c["insertions"]
    # Per utterance too, so `mtspeech compare --task phones` can pair two models' words.
    assert sum(r["phones"]["char_errors"] for r in rows) / sum(r["phones"]["ref_chars"] for r in rows) == \
        pytest.approx(res["metrics"]["phones/cer"])
    assert sum(r["phones"]["ref_words"] for r in rows) == c["ref_len"]


@pytest.mark.slow
def test_unreadable_audio_is_skipped_and_counted(trained, prepared_manifests, tmp_path):
    utts = read_manifest(prepared_manifests["test"])
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"not audio at all")
    utts = utts + [dataclasses.replace(utts[0], id="broken-0", audio=str(bad)),
                   dataclasses.replace(utts[0], id="missing-0", audio=str(tmp_path / "nope.flac"))]
    write_manifest(tmp_path / "m.jsonl", utts)
    res = evaluate(trained, tmp_path / "m.jsonl", tmp_path / "ev", chunk_frames=4)  # streaming mode too
    assert res["skipped_audio"] == 2 and {s["id"] for s in res["skipped"]} == {"broken-0", "missing-0"}
    assert res["num_scored"] == len(utts) - 2
    assert len(_read(tmp_path / "ev" / "hypotheses.jsonl")) == len(utts) - 2


def test_missing_or_corrupt_inputs_raise_clear_errors(prepared_manifests, tmp_path):
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate(tmp_path / "none.pt", prepared_manifests["test"], tmp_path / "ev")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(EvaluationError, match="garbage.pt"):
        evaluate(garbage, prepared_manifests["test"], tmp_path / "ev")


@pytest.mark.slow
def test_missing_or_malformed_manifest_and_cli(trained, prepared_manifests, tmp_path):
    with pytest.raises(EvaluationError, match="nope.jsonl"):
        evaluate(trained, tmp_path / "nope.jsonl", tmp_path / "ev")
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(EvaluationError, match="bad.jsonl"):
        evaluate(trained, tmp_path / "bad.jsonl", tmp_path / "ev")

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(trained), str(prepared_manifests["test"]), "--out", str(tmp_path / "cli"),
                              "--decoder", "beam", "--beam-size", "4"])
    assert main(args) == 0
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["decoder_options"]["beam_size"] == 4
    assert main(parser.parse_args([str(tmp_path / "none.pt"), str(prepared_manifests["test"])])) == 2


def test_duration_batches_cover_every_utterance_once_within_budget():
    from mtspeech.data.manifest import Utterance

    utts = [Utterance(f"u{i}", "/x.flac", d) for i, d in enumerate([3.0, 1.0, 7.5, 2.0, 2.0, 12.0, 0.5])]
    batches = duration_batches(utts, max_batch_seconds=8.0)
    assert sorted(i for b in batches for i in b) == list(range(len(utts)))
    for b in batches:
        durations = [utts[i].duration for i in b]
        assert durations == sorted(durations)
        assert len(b) == 1 or max(durations) * len(b) <= 8.0


def test_auto_lm_reads_every_training_manifest_of_a_list(tmp_path):
    from types import SimpleNamespace

    from mtspeech.data.manifest import Utterance
    from mtspeech.decoding.embedded_lm import training_transcripts_lm
    from mtspeech.decoding.lm import ArpaLM

    for name, text in (("a", "ALPHA BETA"), ("b", "GAMMA DELTA")):
        write_manifest(tmp_path / f"{name}.jsonl", [Utterance(f"1-1-{name}", "x.flac", 1.0, text=text)])
    exp = SimpleNamespace(data=SimpleNamespace(train=(str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"))))
    arpa = training_transcripts_lm(exp, tmp_path, use_embedded=False)
    assert {"ALPHA", "BETA", "GAMMA", "DELTA"} <= set(ArpaLM.load(arpa).vocab)
    exp = SimpleNamespace(data=SimpleNamespace(train=(str(tmp_path / "a.jsonl"), str(tmp_path / "gone.jsonl"))))
    with pytest.raises(DecodingError, match="gone.jsonl"):
        training_transcripts_lm(exp, tmp_path, use_embedded=False)
