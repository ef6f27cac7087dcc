"""Conditioning on a lower layer's CTC posteriors: it changes what the upper layers read, it
trains, it streams (chunked equals masked full) and it leaves unconditioned encoders as they were."""

import copy

import pytest
import torch
from torch import nn

from encoder_helpers import feats, stream_alone, tiny
from mtspeech.encoders.masks import attention_mask

TOL = dict(atol=1e-5, rtol=1e-5)


class Head(nn.Module):
    """A CTC-like head: h (B,T,D), h_lens (B,) → logits (B,T,V)."""

    def __init__(self, dim: int = 32, vocab: int = 7, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.out = nn.Linear(dim, vocab)

    def forward(self, h, h_lens):
        return self.out(h)


def conditioned(kind: str = "conformer", layers: int = 3) -> tuple[nn.Module, nn.Module]:
    """(a tiny encoder, the same weights with two heads conditioning layer 0 and one layer 1)."""
    plain = tiny(kind, layers=layers)
    enc = copy.deepcopy(plain)
    phones, asr = Head(vocab=5, seed=1), Head(vocab=9, seed=2)
    enc.add_conditioner(0, "phones", phones, 5)
    enc.add_conditioner(0, "asr", asr, 9)
    enc.add_conditioner(-2, "asr", asr, 9)  # layer 1: the same (shared) head again
    return plain, enc


@torch.no_grad()
def test_conditioning_changes_the_input_of_the_layer_above_only():
    plain, enc = conditioned()
    plain.eval(), enc.eval()
    x, lens = feats(61, 45)
    base, out = plain(x, lens), enc(x, lens)
    torch.testing.assert_close(out.layers[0], base.layers[0])  # below and at the layer: unchanged
    for k in (1, 2):
        assert not torch.allclose(out.layers[k], base.layers[k], atol=1e-3)
    # Block 1 reads h_0 + Σ proj(softmax(head(h_0))), padding kept at zero.
    h0 = out.layers[0]
    group = enc.conditioners["0"]
    expected_logits = {name: c.head(h0, out.lens) for name, c in group.items()}
    update = sum(c.proj(expected_logits[name].softmax(-1)) for name, c in group.items())
    pad = (torch.arange(h0.shape[1]) >= out.lens[:, None]).unsqueeze(-1)
    block_input = (h0 + update).masked_fill(pad, 0.0)
    t = h0.shape[1]
    positions = torch.arange(t).expand(2, t)
    h1 = enc.blocks[1](block_input, positions, attention_mask(out.lens, t, None, None))[0].masked_fill(pad, 0.0)
    torch.testing.assert_close(out.layers[1], h1, **TOL)
    # The heads' logits come back for the losses to reuse.
    assert set(out.head_logits) == {("phones", 0), ("asr", 0), ("asr", 1)}
    for name, logits in expected_logits.items():
        torch.testing.assert_close(out.head_logits[(name, 0)], logits)
    assert base.head_logits == {}


def test_gradients_reach_the_projection_and_the_head():
    enc = tiny("conformer")  # 2 layers: phones at layer 0 conditions layer 1
    head = Head(vocab=5, seed=1)
    enc.add_conditioner(0, "phones", head, 5)
    enc.train()
    x, lens = feats(61, 45)
    out = enc(x, lens, chunk_frames=4)
    out.layers[-1].pow(2).sum().backward()  # a loss on the top layer only
    proj = enc.conditioners["0"]["phones"].proj
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert head.out.weight.grad is not None and head.out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["conformer", "transformer"])
@pytest.mark.parametrize("chunk_frames,left_chunks", [(1, 3), (4, 0), (5, 2)])
@torch.no_grad()
def test_chunked_equals_masked_full_with_conditioning(kind, chunk_frames, left_chunks):
    _, enc = conditioned(kind)
    enc.eval()
    x, lens = feats(79)
    full = enc(x, lens, chunk_frames=chunk_frames, left_chunks=left_chunks)
    chunked, logits, cache = stream_alone(enc, x, chunk_frames, left_chunks)
    assert int(cache.frames_seen) == int(full.lens)
    for k in range(enc.num_layers):
        torch.testing.assert_close(chunked[k], full.layers[k], **TOL)
    assert set(logits) == set(full.head_logits)
    for key, value in full.head_logits.items():
        torch.testing.assert_close(logits[key], value, **TOL)


@torch.no_grad()
def test_conditioning_keeps_padding_invariance():
    _, enc = conditioned()
    enc.eval()
    x, lens = feats(79, 40)
    both = enc(x, lens, chunk_frames=3, left_chunks=1)
    alone = enc(x[1:, :40], lens[1:], chunk_frames=3, left_chunks=1)
    n = int(alone.lens[0])
    for k in range(enc.num_layers):
        torch.testing.assert_close(both.layers[k][1:, :n], alone.layers[k], **TOL)
        assert both.layers[k][1, n:].abs().max() == 0  # padding stays zero


def test_add_conditioner_rejects_the_top_layer_and_repeats():
    enc = tiny("conformer")  # 2 layers
    for layer in (1, -1, 2, -3):
        with pytest.raises(ValueError, match="block above it"):
            enc.add_conditioner(layer, "phones", Head(), 7)
    enc.add_conditioner(-2, "phones", Head(), 7)
    with pytest.raises(ValueError, match="already conditions layer 0"):
        enc.add_conditioner(0, "phones", Head(), 7)


def test_an_unconditioned_encoder_has_no_conditioning_state():
    """Checkpoints written before conditioning existed hold exactly these keys."""
    plain, enc = conditioned()
    assert not any("conditioners" in k for k in plain.state_dict())
    new = {k for k in enc.state_dict() if k not in plain.state_dict()}
    assert new and all(k.startswith("conditioners.") for k in new)


@torch.no_grad()
def test_streaming_heads_reuse_the_conditioning_pass_logits():
    """A head that conditioned layer 0 already ran on it in `forward_chunk`: the streaming step's
    `head_logits` returns those logits (equal to running the head) without running it again."""
    from mtspeech.streaming.encoder import head_logits

    _, enc = conditioned()
    enc.eval()
    phones = next(m for m in enc.modules() if isinstance(m, Head) and m.out.out_features == 5)
    phones.name, phones.layer = "phones", 0
    x, _ = feats(4 * 4 + 3)
    out, _ = enc.forward_chunk(x, enc.init_cache(1, 4, 2))
    calls = []
    hook = phones.register_forward_hook(lambda *a: calls.append(1))
    got = head_logits({"phones": phones}, out, ("phones",))["phones"]
    hook.remove()
    assert calls == [] and got is out.head_logits[("phones", 0)]
    torch.testing.assert_close(got, phones(out.layers[0], out.lens))
