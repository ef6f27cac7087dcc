"""One model, two modes: cached chunk-by-chunk forward equals the chunk-masked full forward."""

import pytest
import torch

from encoder_helpers import feats, stream_alone
from mtspeech.encoders import EncoderCache
from mtspeech.encoders.subsampling import chunk_window, chunk_windows

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_frames,left_chunks", [(1, 3), (3, 1), (4, 0), (5, 2)])
@torch.no_grad()
def test_chunked_equals_masked_full(encoder, chunk_frames, left_chunks):
    x, lens = feats(79)  # 19 encoder frames: not a multiple of any chunk size here
    full = encoder(x, lens, chunk_frames=chunk_frames, left_chunks=left_chunks)
    chunked, _, cache = stream_alone(encoder, x, chunk_frames, left_chunks)
    assert int(cache.frames_seen) == int(full.lens) == 19
    for k in range(encoder.num_layers):
        assert chunked[k].shape == full.layers[k].shape
        torch.testing.assert_close(chunked[k], full.layers[k], **TOL)


@torch.no_grad()
def test_limited_context_differs_from_full(conformer):
    x, lens = feats(79)
    a = conformer(x, lens, chunk_frames=2, left_chunks=1).layers[-1]
    b = conformer(x, lens).layers[-1]
    assert not torch.allclose(a, b, atol=1e-3)  # the masks really are applied


@torch.no_grad()
def test_streams_at_different_progress_batch_together(encoder):
    c, left = 3, 2
    x1, _ = feats(79, seed=2)
    x2, _ = feats(50, seed=3)
    w1, w2 = chunk_windows(79, c), chunk_windows(50, c)
    cache1 = encoder.init_cache(1, c, left)
    for s, e in w1[:3]:  # stream 1 is three chunks ahead
        _, cache1 = encoder.forward_chunk(x1[:, s:e], cache1)
    cache2 = encoder.init_cache(1, c, left)

    # one step: stream 1 chunk 4 next to stream 2 chunk 1, versus each alone
    (s1, e1), (s2, e2) = w1[3], w2[0]
    alone1, new1 = encoder.forward_chunk(x1[:, s1:e1], cache1)
    alone2, new2 = encoder.forward_chunk(x2[:, s2:e2], cache2)
    both, new = encoder.forward_chunk(torch.cat([x1[:, s1:e1], x2[:, s2:e2]]), EncoderCache.stack([cache1, cache2]))
    for k in range(encoder.num_layers):
        torch.testing.assert_close(both.layers[k][:1], alone1.layers[k], **TOL)
        torch.testing.assert_close(both.layers[k][1:], alone2.layers[k], **TOL)
    for got, want in zip(new.unstack(), [new1, new2]):
        assert torch.equal(got.key_valid, want.key_valid) and torch.equal(got.frames_seen, want.frames_seen)
        torch.testing.assert_close(got.keys, want.keys, **TOL)
        torch.testing.assert_close(got.conv, want.conv, **TOL)


@torch.no_grad()
def test_batched_streaming_with_short_last_chunks_equals_full(encoder):
    """A batcher-like loop: streams start at different steps and end with shorter, padded chunks."""
    c, left = 4, 1
    utts = [feats(79, seed=4)[0], feats(45, seed=5)[0], feats(66, seed=6)[0]]
    starts = [0, 2, 1]  # step at which each stream opens
    windows = [chunk_windows(u.shape[1], c) for u in utts]
    caches = [encoder.init_cache(1, c, left) for _ in utts]
    outs = [[[] for _ in range(encoder.num_layers)] for _ in utts]
    step = 0
    while True:
        active = [i for i, u in enumerate(utts) if 0 <= step - starts[i] < len(windows[i])]
        if not active and step > max(starts):
            break
        step += 1
        if not active:
            continue
        chunks = [utts[i][0, slice(*windows[i][step - 1 - starts[i]])] for i in active]
        lens = torch.tensor([ch.shape[0] for ch in chunks])
        x = torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True)
        out, cache = encoder.forward_chunk(x, EncoderCache.stack([caches[i] for i in active]), chunk_lens=lens)
        for row, (i, new) in enumerate(zip(active, cache.unstack())):
            caches[i] = new
            for k in range(encoder.num_layers):
                outs[i][k].append(out.layers[k][row, : out.lens[row]])
    for i, u in enumerate(utts):
        full = encoder(u, torch.tensor([u.shape[1]]), chunk_frames=c, left_chunks=left)
        for k in range(encoder.num_layers):
            torch.testing.assert_close(torch.cat(outs[i][k]), full.layers[k][0], **TOL)


@torch.no_grad()
def test_zero_length_rows_leave_cache_untouched(conformer):
    cache = conformer.init_cache(2, 2, 1)
    x, _ = feats(11, 11)
    _, cache = conformer.forward_chunk(x, cache)
    out, new = conformer.forward_chunk(x, cache, chunk_lens=torch.tensor([11, 0]))
    assert out.lens.tolist() == [2, 0]
    old2, new2 = cache.unstack()[1], new.unstack()[1]
    assert torch.equal(old2.keys, new2.keys) and torch.equal(old2.conv, new2.conv)
    assert torch.equal(old2.frames_seen, new2.frames_seen) and torch.equal(old2.key_valid, new2.key_valid)
    assert torch.isfinite(out.layers[-1]).all()


def test_cache_stack_unstack_round_trip(conformer):
    c, left = 2, 3
    caches = [conformer.init_cache(1, c, left)]
    x, _ = feats(40, seed=7)
    _, moved = conformer.forward_chunk(x[:, : chunk_window(c)[0]], caches[0])
    caches.append(moved)
    stacked = EncoderCache.stack(caches)
    assert stacked.batch_size == 2 and stacked.keys.shape == (2, 2, 2, c * left, 16)
    assert stacked.conv.shape == (2, 2, 32, 4) and stacked.frames_seen.tolist() == [0, c]
    for a, b in zip(stacked.unstack(), caches):
        for f in ("keys", "values", "key_valid", "conv", "frames_seen"):
            assert torch.equal(getattr(a, f), getattr(b, f))
    assert stacked.to("cpu").keys.device.type == "cpu"
    with pytest.raises(ValueError, match="different geometry"):
        EncoderCache.stack([caches[0], conformer.init_cache(1, c + 1, left)])


def test_streaming_needs_finite_left_context_and_valid_windows(conformer):
    with pytest.raises(ValueError, match="finite left_chunks"):
        conformer.init_cache(1, 4, None)
    cache = conformer.init_cache(1, 2, 1)
    with pytest.raises(ValueError, match="4c\\+3"):
        conformer.forward_chunk(torch.zeros(1, 12, 20), cache)
    out, same = conformer.forward_chunk(torch.zeros(1, 5, 20), cache)  # too short for one frame
    assert out.layers[0].shape == (1, 0, 32) and same is cache
