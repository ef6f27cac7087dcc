"""Full-forward behaviour: padding invariance, lengths, gradients, dynamic chunks, registry."""

import pytest
import torch

from encoder_helpers import feats, tiny
from mtspeech.config import ConfigError
from mtspeech.encoders import ENCODERS, ConformerConfig, build_encoder
from mtspeech.encoders.masks import attention_mask, chunk_mask, padding_mask, sample_chunk
from mtspeech.encoders.subsampling import chunk_window, chunk_windows, subsampled_lens

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_frames,left_chunks", [(None, None), (3, 1), (2, None)])
@torch.no_grad()
def test_padding_invariance(encoder, chunk_frames, left_chunks):
    x, lens = feats(90, 47, 62)
    batch = encoder(x, lens, chunk_frames, left_chunks)
    for i in range(3):
        alone = encoder(x[i : i + 1, : lens[i]], lens[i : i + 1], chunk_frames, left_chunks)
        n = int(alone.lens)
        assert n == int(batch.lens[i])
        for k in range(encoder.num_layers):
            torch.testing.assert_close(batch.layers[k][i, :n], alone.layers[k][0], **TOL)
            assert torch.all(batch.layers[k][i, n:] == 0)


def test_output_lens(encoder):
    x, lens = feats(7, 10, 11, 100, 3)
    out = encoder(x, lens)
    assert torch.equal(out.lens, encoder.output_lens(lens))
    assert out.lens.tolist() == [1, 1, 2, 24, 0]
    assert all(layer.shape == (5, 24, 32) for layer in out.layers)
    assert len(out.layers) == encoder.num_layers == 2
    assert encoder.dim == 32 and encoder.subsampling == 4 and encoder.right_context == 6
    short = encoder(*feats(5, 3))  # shorter than one receptive field: empty, not an error
    assert short.lens.tolist() == [0, 0] and short.layers[-1].shape == (2, 0, 32)


def test_frame_arithmetic():
    t = torch.arange(0, 200)
    assert torch.equal(subsampled_lens(t), (((t - 1) // 2 - 1) // 2).clamp(min=0))
    assert chunk_window(5) == (23, 20)
    for n in (7, 30, 83, 101):
        for c in (1, 3, 4):
            w = chunk_windows(n, c)
            assert sum(int(subsampled_lens(torch.tensor(e - s))) for s, e in w) == int(subsampled_lens(torch.tensor(n)))
            assert all(e - s <= 4 * c + 3 for s, e in w)


def test_masks():
    m = chunk_mask(6, 2, left_chunks=1)
    assert m[4].tolist() == [False, False, True, True, True, True]
    assert m[1].tolist() == [True, True, False, False, False, False]
    assert chunk_mask(6, 2)[5].all()
    assert padding_mask(torch.tensor([2, 0]), 3).tolist() == [[True, True, False], [False, False, False]]
    a = attention_mask(torch.tensor([3, 0]), 3, 2, None)
    assert a.shape == (2, 1, 3, 3) and a[1, 0].any(dim=-1).all()  # no all-False row


def test_dynamic_chunk_sampling_covers_full_and_limited():
    g = torch.Generator().manual_seed(0)
    draws = [sample_chunk(4, 2, 50, generator=g) for _ in range(400)]
    assert (None, None) in draws
    assert {c for c, _ in draws if c is not None} == {1, 2, 3, 4}
    assert {left for c, left in draws if c is not None} == {2}
    lefts = {left for c, left in (sample_chunk(4, 2, 50, True, g) for _ in range(400)) if c is not None}
    assert lefts == {0, 1, 2}
    lefts = {left for c, left in (sample_chunk(4, None, 50, True, g) for _ in range(400)) if c == 4}
    assert max(lefts) == 12  # (50 - 1) // 4 chunks of left context at most


def test_train_mode_samples_chunks_and_gradients_flow():
    enc = tiny("conformer", dropout=0.0)
    x, lens = feats(60, 41)
    with torch.no_grad():
        full = enc.eval()(x, lens).layers[-1]
    enc.train()
    torch.manual_seed(0)
    with torch.no_grad():
        same = [torch.allclose(enc(x, lens).layers[-1], full, atol=1e-6) for _ in range(16)]
    assert any(same) and not all(same)  # both full-context and chunked batches were drawn
    x.requires_grad_(True)
    enc(x, lens, chunk_frames=2, left_chunks=1).layers[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_registry_builds_both():
    assert set(ENCODERS) >= {"conformer", "transformer"}
    for name in ("conformer", "transformer"):
        enc = build_encoder(name, {"input_dim": 20, "dim": 32, "layers": 2, "heads": 2})
        assert isinstance(enc, ENCODERS[name]) and enc.num_layers == 2
    enc = build_encoder("conformer", ConformerConfig(input_dim=20, dim=32, layers=1, heads=2))
    assert enc.cfg.layers == 1
    with pytest.raises(ConfigError, match="encoder.bogus"):
        build_encoder("conformer", {"bogus": 1})
    with pytest.raises(ConfigError, match="encoder.dim"):
        build_encoder("conformer", {"dim": "big"})
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("lstm", {})
    with pytest.raises(TypeError):
        ENCODERS["transformer"](ConformerConfig())
