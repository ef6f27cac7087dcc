"""`apply_delta` refuses a delta that does not fit the model it is applied to (a server loading
per-customer deltas checks them at start-up through it), and applies one that does."""

from __future__ import annotations

import pytest
import torch

from mtspeech.adaptation.param_sets import AdaptationError, apply_delta

STATE = {"encoder.blocks.0.norm.weight": torch.ones(4), "encoder.blocks.0.attn.qkv.weight": torch.zeros(6, 4)}
LAYER_NORMS = {"kind": "layer-norms", "layers": None, "rank": 4, "alpha": 8.0, "target": "attention"}
LORA = {**LAYER_NORMS, "kind": "lora", "rank": 2}


def test_a_fitting_delta_is_applied():
    out = apply_delta(STATE, {"set": LAYER_NORMS, "tensors": {"encoder.blocks.0.norm.weight": torch.full((4,), 2.0)}})
    assert torch.equal(out["encoder.blocks.0.norm.weight"], torch.full((4,), 2.0))
    lora = {"encoder.blocks.0.attn.qkv.weight.lora_A": torch.ones(2, 4),
            "encoder.blocks.0.attn.qkv.weight.lora_B": torch.ones(6, 2)}
    out = apply_delta(STATE, {"set": LORA, "tensors": lora})
    assert torch.equal(out["encoder.blocks.0.attn.qkv.weight"], torch.full((6, 4), 8.0))  # 8/2 · (B A = 2)


@pytest.mark.parametrize("delta, names", [
    ({"set": LAYER_NORMS, "tensors": {"encoder.blocks.9.norm.weight": torch.ones(4)}}, "does not have"),
    ({"set": LAYER_NORMS, "tensors": {"encoder.blocks.0.norm.weight": torch.ones(5)}}, "shape (5,)"),
    ({"set": LAYER_NORMS, "tensors": {"encoder.blocks.0.norm.weight": torch.ones(())}}, "shape ()"),
    ({"set": LORA, "tensors": {"encoder.blocks.0.attn.qkv.weight.lora_A": torch.ones(2, 5),
                               "encoder.blocks.0.attn.qkv.weight.lora_B": torch.ones(6, 2)}}, "do not fit"),
    ({"set": LORA, "tensors": {"encoder.blocks.0.attn.qkv.weight.lora_A": torch.ones(2, 4)}}, "do not fit"),
    ({"set": {**LAYER_NORMS, "colour": 1}, "tensors": {}}, "not one adapt writes"),
    ({"set": {**LAYER_NORMS, "kind": "everything"}, "tensors": {}}, "unknown parameter set"),
    ({"model": STATE}, "not a delta file"),
    ({"set": LAYER_NORMS, "tensors": {"encoder.blocks.0.norm.weight": [1.0] * 4}}, "not tensors"),
])
def test_a_delta_that_does_not_fit_is_refused_naming_why(delta, names):
    with pytest.raises(AdaptationError, match=names.replace("(", r"\(").replace(")", r"\)")):
        apply_delta(STATE, delta)


def test_a_delta_recording_other_base_weights_is_refused():
    """Same names and shapes, other values: only the fingerprint `adapt` records tells."""
    from mtspeech.adaptation.param_sets import weights_fingerprint

    delta = {"set": LAYER_NORMS, "tensors": {"encoder.blocks.0.norm.weight": torch.full((4,), 2.0)},
             "base_weights": weights_fingerprint(STATE)}
    assert torch.equal(apply_delta(STATE, delta)["encoder.blocks.0.norm.weight"], torch.full((4,), 2.0))
    other = {**STATE, "encoder.blocks.0.attn.qkv.weight": torch.ones(6, 4)}
    assert weights_fingerprint(other) != weights_fingerprint(STATE)
    assert weights_fingerprint({k: v.clone() for k, v in STATE.items()}) == weights_fingerprint(STATE)
    with pytest.raises(AdaptationError, match="made from other weights"):
        apply_delta(other, delta)
