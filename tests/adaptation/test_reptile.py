"""`mtspeech meta-train`: Reptile moves the start, is reproducible from its seed, resumes exactly
after an interruption, and `adapt` starts from what it learned."""

from __future__ import annotations

import pytest
import torch

from mtspeech.adaptation import reptile
from mtspeech.adaptation.command import INIT_KEY, adapt
from mtspeech.adaptation.param_sets import AdaptationError, ParamSet, ParamSetConfig
from mtspeech.checkpoint import load_model, load_state
from mtspeech.data.manifest import read_manifest

SET = ParamSetConfig("layer-norms", layers=1)
SMALL = reptile.ReptileConfig(outer_steps=4, meta_batch=2, k=1, inner_steps=2, inner_lr=1e-2, save_every=2)


@pytest.fixture(scope="module")
def train_utts(prepared_manifests):
    return read_manifest(prepared_manifests["train"])  # 4 voices, 2-3 utterances each


@pytest.fixture(scope="module")
def learned(tiny_trained, train_utts, tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "meta.pt"
    return out, reptile.meta_train(tiny_trained, train_utts, SET, out, SMALL)


def test_reptile_moves_the_start_and_keeps_the_weights(tiny_trained, learned):
    out, entry = learned
    start = ParamSet(load_model(tiny_trained)[0], SET).initial()
    assert entry["tensors"].keys() == start.keys() and entry["outer_steps_done"] == 4
    assert any(not torch.allclose(entry["tensors"][k], start[k]) for k in start)
    base, meta = load_state(tiny_trained), load_state(out)
    assert all(torch.equal(base["model"][k], meta["model"][k]) for k in base["model"])  # evaluate: the base
    assert meta[INIT_KEY]["set"] == SET.as_dict()


def test_reptile_is_reproducible_from_its_seed(tiny_trained, train_utts, learned, tmp_path):
    again = reptile.meta_train(tiny_trained, train_utts, SET, tmp_path / "again.pt", SMALL)
    other = reptile.meta_train(tiny_trained, train_utts, SET, tmp_path / "other.pt",
                               reptile.ReptileConfig(**{**SMALL.__dict__, "seed": 1}))
    for k, v in learned[1]["tensors"].items():
        assert torch.equal(again["tensors"][k], v)
    assert any(not torch.equal(other["tensors"][k], v) for k, v in learned[1]["tensors"].items())


def test_reptile_resumes_exactly_after_an_interruption(tiny_trained, train_utts, learned, tmp_path, monkeypatch):
    out = tmp_path / "resumed.pt"
    calls = {"n": 0}
    real = reptile.fine_tune

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:  # outer steps 1-2 (2 voices each) saved, killed inside step 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(reptile, "fine_tune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reptile.meta_train(tiny_trained, train_utts, SET, out, SMALL)
    assert load_state(out)[INIT_KEY]["outer_steps_done"] == 2
    monkeypatch.setattr(reptile, "fine_tune", real)
    resumed = reptile.meta_train(tiny_trained, train_utts, SET, out, SMALL)
    for k, v in learned[1]["tensors"].items():
        assert torch.equal(resumed["tensors"][k], v)


def test_other_settings_do_not_overwrite_a_run(tiny_trained, train_utts, learned):
    with pytest.raises(AdaptationError, match="not written by a meta-train run with these settings"):
        reptile.meta_train(tiny_trained, train_utts, SET, learned[0],
                           reptile.ReptileConfig(**{**SMALL.__dict__, "k": 2}))


def test_adapt_starts_from_the_learned_start(learned, train_utts, new_condition, tmp_path):
    out, entry = learned
    voice = read_manifest(new_condition)[:1]
    record = adapt(out, voice, SET, tmp_path / "a.pt", steps=1)
    assert record["init"] == "meta"
    assert INIT_KEY not in load_state(tmp_path / "a.pt")
    assert adapt(out, voice, SET, tmp_path / "b.pt", steps=1, init="model")["init"] == "model"
    with pytest.raises(AdaptationError, match="no Reptile start for"):
        adapt(out, voice, ParamSetConfig("input-norm"), tmp_path / "c.pt", steps=1, init="meta")


def test_too_few_utterances_per_voice_is_refused(tiny_trained, train_utts, tmp_path):
    with pytest.raises(AdaptationError, match="no voice has 9 transcribed utterances"):
        reptile.meta_train(tiny_trained, train_utts, SET, tmp_path / "x.pt",
                           reptile.ReptileConfig(**{**SMALL.__dict__, "k": 9}))
