"""Hierarchical CTC: conditioning and intermediate losses from the experiment config to the loss,
with clear errors for configurations that cannot work."""

from __future__ import annotations

import pytest
import torch

from mtspeech.config import ConfigError
from mtspeech.experiment import build_model, experiment_from_dict
from mtspeech.tasks import Targets

VOCAB = 12
LABELS = {"asr": {"label": "text", "vocab_size": VOCAB}, "phones": {"label": "phones", "phones": ["AA", "B", "K"]}}


def config(layers: int = 4, **tasks: dict) -> dict:
    """A tiny experiment: asr on top and phones at layer 1, each updated by `tasks[name]`."""
    base = {"asr": {"kind": "ctc", "label": "text", "layer": -1, "dropout": 0.0},
            "phones": {"kind": "ctc", "label": "phones", "layer": 1, "dropout": 0.0}}
    for name, fields in tasks.items():
        base[name] = fields if fields.get("kind") and name not in base else {**base.get(name, {}), **fields}
    return {"exp_dir": "unused", "data": {"train": "unused.jsonl"},
            "encoder": {"kind": "conformer", "input_dim": 80, "dim": 32, "layers": layers, "heads": 2,
                        "conv_kernel": 5, "dropout": 0.0, "max_chunk_frames": 4},
            "tasks": base}


def model_for(cfg: dict, labels: dict = LABELS):
    torch.manual_seed(0)
    return build_model(experiment_from_dict(cfg), labels).eval()


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    wav, wav_lens = torch.randn(2, 16000, generator=g) * 0.1, torch.tensor([16000, 12000])
    asr = Targets(values=torch.tensor([[1, 2, 3], [4, 5, 0]]), lens=torch.tensor([3, 2]),
                  present=torch.tensor([True, True]))
    phones = Targets(values=torch.tensor([[1, 2], [3, 0]]), lens=torch.tensor([2, 1]),
                     present=torch.tensor([True, True]))
    return wav, wav_lens, {"asr": asr, "phones": phones}


def test_phones_condition_the_layers_above_and_their_logits_are_reused():
    model = model_for(config(phones={"condition": True}))
    assert set(model.encoder.conditioners) == {"1"}
    assert model.encoder.conditioners["1"]["phones"].head is model.tasks["phones"]  # shared, not copied
    calls = []
    model.tasks["phones"].out.register_forward_hook(lambda *_: calls.append(1))
    wav, wav_lens, targets = batch()
    losses, logits, _ = model(wav, wav_lens, targets)
    assert len(calls) == 1  # the conditioning pass's logits serve the loss too
    plain = model_for(config())
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.conditioners.")}
    plain.load_state_dict(shared)  # the same weights without the conditioner
    plain_losses, plain_logits, _ = plain(wav, wav_lens, targets)
    torch.testing.assert_close(logits["phones"], plain_logits["phones"])  # at and below: unchanged
    assert not torch.allclose(logits["asr"], plain_logits["asr"], atol=1e-4)  # above: conditioned


def test_intermediate_ctc_averages_the_shared_head_over_layers():
    w = 0.4
    model = model_for(config(asr={"intermediate_layers": [1, 2], "intermediate_weight": w}))
    assert not model.encoder.conditioners  # intermediate losses alone do not condition
    wav, wav_lens, targets = batch()
    losses, logits, lens = model(wav, wav_lens, targets)
    enc = model.encode(wav, wav_lens)
    asr = model.tasks["asr"]
    final = asr.loss(asr(enc.layers[-1], enc.lens), enc.lens, targets["asr"])
    inter = [asr.loss(asr(enc.layers[k], enc.lens), enc.lens, targets["asr"]) for k in (1, 2)]
    torch.testing.assert_close(losses["asr"], (1 - w) * final + w * (inter[0] + inter[1]) / 2)
    assert not torch.allclose(final, losses["asr"])


def test_self_conditioned_intermediate_ctc_reuses_every_intermediate_logit():
    model = model_for(config(asr={"intermediate_layers": [0, 2], "condition": True}))
    assert set(model.encoder.conditioners) == {"0", "2"}  # not the top: nothing above it
    calls = []
    model.tasks["asr"].out.register_forward_hook(lambda *_: calls.append(1))
    wav, wav_lens, targets = batch()
    losses, _, _ = model(wav, wav_lens, targets)
    assert len(calls) == 3  # layers 0 and 2 inside the encoder, the top in the model
    assert torch.isfinite(losses["asr"])


def test_too_short_rows_are_counted_once_whatever_the_layers():
    model = model_for(config(asr={"intermediate_layers": [1, 2]}))
    wav, wav_lens, targets = batch()
    targets["asr"] = Targets(values=torch.ones(2, 200, dtype=torch.long), lens=torch.tensor([200, 2]),
                             present=torch.tensor([True, True]))
    model(wav, wav_lens, targets)
    assert model.tasks["asr"].too_short == 1


@pytest.mark.parametrize("tasks,layers,message", [
    ({"phones": {"layer": -1, "condition": True}}, 4, r"tasks\.phones\.condition: .*top layer"),
    ({"asr": {"condition": True}}, 4, r"tasks\.asr\.condition: .*no layer above"),
    ({"asr": {"intermediate_layers": [2, 4]}}, 4, r"tasks\.asr\.intermediate_layers: layer 4 is outside"),
    ({"asr": {"intermediate_layers": [-5]}}, 4, r"tasks\.asr\.intermediate_layers: layer -5 is outside"),
    ({"phones": {"intermediate_layers": [2]}}, 4, r"tasks\.phones\.intermediate_layers: \[2\] not below"),
    ({"asr": {"intermediate_layers": [1, 1]}}, 4, r"repeats a layer"),
    ({"asr": {"intermediate_weight": 1.5}}, 4, r"intermediate_weight: 1.5 is not in \[0, 1\]"),
    ({"phones": {"layer": "learned", "condition": True}}, 4, r"tasks\.phones\.layer: 'learned' .*`condition`"),
])
def test_hierarchy_config_errors_name_the_key(tasks, layers, message):
    with pytest.raises(ConfigError, match=message):
        model_for(config(layers, **tasks))


@pytest.mark.parametrize("key,value", [("condition", True), ("intermediate_layers", [1])])
def test_only_ctc_tasks_take_hierarchy_keys(key, value):
    cfg = config(speaker={"kind": "speaker", "layer": 1, key: value})
    with pytest.raises(ConfigError, match=rf"tasks\.speaker\.{key}: only `ctc` tasks .* 'speaker' task"):
        experiment_from_dict(cfg)
