"""StreamingRecognizer: streamed == offline (same chunk mask), batching invariance, endpointing.

A tiny randomly initialised model: "correct" means token-for-token equal to decoding the
whole utterance offline with the same chunk configuration (chunk-masked full forward +
greedy CTC, `CTCTask.greedy_decode`).
"""

from __future__ import annotations

import numpy as np
import pytest
import soxr
import torch
import torchaudio

from mtspeech.streaming.endpoint import EndpointConfig, Endpointer
from mtspeech.streaming import FinalEvent, PartialEvent, StreamingRecognizer, StreamResampler
from mtspeech.tasks.ctc import CTCTask
from tiny_asr import CHUNK, LEFT, ScriptedVAD, signal, tiny_recognizer

# Tiny models on 2 shared cores: one intra-op thread is ~100x faster than contended pools.
torch.set_num_threads(1)


def offline_tokens(rec: StreamingRecognizer, wav: np.ndarray) -> list[int]:
    """Reference: chunk-masked full forward + greedy CTC on the whole utterance."""
    model = rec.model
    with torch.inference_mode():
        feats, lens = model.features(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        enc = model.encoder(feats, lens, chunk_frames=CHUNK, left_chunks=LEFT)
        logits = model.tasks["asr"](enc.layers[-1], enc.lens)
    return CTCTask.greedy_decode(logits, enc.lens)[0]


def feed_randomly(rec, stream, wav, rng, rate=16000, step_when_ready=True):
    """Accept `wav` in random 20-100 ms pieces, stepping whenever a chunk is ready."""
    i = 0
    while i < len(wav):
        n = int(rng.integers(20, 101) * rate / 1000)
        rec.accept(stream, wav[i : i + n])
        i += n
        while step_when_ready and rec.ready(stream):
            rec.step([stream])


def finals_of(events) -> list[FinalEvent]:
    return [e for e in events if isinstance(e, FinalEvent)]


def test_streamed_equals_offline_decoding():
    rec = tiny_recognizer()
    wav = signal(3.0)
    ref = offline_tokens(rec, wav)
    assert len(ref) >= 5, "the random model should emit tokens for the test to mean anything"
    s = rec.new_stream(endpointing=False)
    feed_randomly(rec, s, wav, np.random.default_rng(1))
    rec.finish(s)
    events = rec.events(s)
    finals = finals_of(events)
    assert len(finals) == 1 and finals[0].reason == "eos"
    assert list(finals[0].tokens) == ref
    assert any(isinstance(e, PartialEvent) for e in events)
    words = finals[0].words
    assert finals[0].text == " ".join(w.word for w in words)
    assert all(0 <= w.start < w.end <= 3.0 + 1e-6 and 0 < w.confidence <= 1 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    # the whole-recording helper agrees
    assert list(rec.transcribe(wav, endpointing=False)[0].tokens) == ref


def test_batched_streams_at_different_progress_equal_one_by_one():
    rec = tiny_recognizer()
    wavs = [signal(2.0 + 0.37 * k, seed=k) for k in range(3)]
    alone = [rec.transcribe(w, endpointing=False)[0] for w in wavs]
    streams = [rec.new_stream(endpointing=False) for _ in wavs]
    # Stream k starts k * 0.5 s late, so the batch mixes caches at different positions.
    pos, piece = [0, 0, 0], 800
    for tick in range(400):
        for k, (s, w) in enumerate(zip(streams, wavs)):
            if tick >= 12 * k and pos[k] < len(w):
                rec.accept(s, w[pos[k] : pos[k] + piece])
                pos[k] += piece
        ready = [s for s in streams if rec.ready(s)]
        if ready:
            rec.step(ready)
        if all(p >= len(w) for p, w in zip(pos, wavs)) and not ready:
            break
    for s in streams:
        rec.finish(s)
    batched = [finals_of(rec.events(s))[0] for s in streams]
    for a, b in zip(alone, batched):
        assert a.tokens == b.tokens
        assert a.words == b.words


def test_streams_finished_together_equal_one_by_one():
    """`finish_many` runs every stream's last, shorter window in one right-padded batch
    (`chunk_lens`); each stream's events must equal finishing it alone, including the speech
    activity of the padded rows and a rest too short to decode (< 7 feature frames)."""
    rec = tiny_recognizer()
    # rests of 0.03 s (too short), and several lengths between 7 frames and one window
    seconds = [1.3, 1.37, 1.45, 1.52, 1.6, 1.67, 2.9]
    wavs = [signal(t, seed=k) for k, t in enumerate(seconds)]

    def run(together: bool) -> list[list]:
        streams = [rec.new_stream(endpointing=False, speech_activity=True) for _ in wavs]
        for s, w in zip(streams, wavs):
            rec.accept(s, w)
            while rec.ready(s):
                rec.step([s])
        if together:
            rec.finish_many(streams)
        else:
            for s in streams:
                rec.finish(s)
        return [rec.events(s) for s in streams]

    alone, together = run(False), run(True)
    for a, b in zip(alone, together):
        assert [type(e) for e in a] == [type(e) for e in b]
        for x, y in zip(a, b):
            if isinstance(x, FinalEvent):
                assert x.tokens == y.tokens and x.words == y.words
            else:
                assert x == y
    assert sum(isinstance(e, FinalEvent) for ev in together for e in ev) >= 4


def test_stream_resampler_output_does_not_depend_on_chunking():
    rng = np.random.default_rng(0)
    for rate in (8000, 8001, 22050, 44100, 48000, 95999):
        x = rng.standard_normal(rate // 2 + 123).astype(np.float32)
        r = StreamResampler(rate)
        out, i = [], 0
        while i < len(x):
            n = int(rng.integers(1, 2000))
            out.append(r.push(x[i : i + n]))
            i += n
        out.append(r.flush())
        got = np.concatenate(out)
        # soxr's stream is bit-identical to resampling the whole signal, whatever the chunks.
        np.testing.assert_array_equal(got, soxr.resample(x, rate, 16000, "HQ"), err_msg=str(rate))
        assert len(got) == round(len(x) * 16000 / rate), rate


def test_stream_resampler_agrees_with_torchaudio_in_band():
    # soxr HQ and torchaudio's sinc differ in filter shape and edge handling, not in what a
    # band-limited signal sounds like: tones well below both Nyquists agree away from the edges.
    rng = np.random.default_rng(0)
    for rate in (8000, 22050, 44100, 48000):
        t = np.arange(rate // 2 + 123) / rate
        x = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (220, 1000, 1800, 2500))
        x = x.astype(np.float32)
        ref = torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy()
        r = StreamResampler(rate)
        got = np.concatenate([r.push(x[: len(x) // 3]), r.push(x[len(x) // 3 :]), r.flush()])
        assert abs(len(got) - len(ref)) <= 1, rate  # torchaudio rounds the length up, soxr to nearest
        n = min(len(got), len(ref))
        np.testing.assert_allclose(got[100 : n - 100], ref[100 : n - 100], atol=5e-3, err_msg=str(rate))


def test_other_sample_rates_are_resampled():
    rec = tiny_recognizer()
    wav16 = signal(2.0)
    wav8 = torchaudio.functional.resample(torch.from_numpy(wav16), 16000, 8000).numpy()
    ref = rec.transcribe(soxr.resample(wav8, 8000, 16000, "HQ"), endpointing=False)[0]
    s = rec.new_stream(sample_rate=8000, endpointing=False)
    feed_randomly(rec, s, wav8, np.random.default_rng(2), rate=8000)
    rec.finish(s)
    assert finals_of(rec.events(s))[0].tokens == ref.tokens


def test_vad_endpointing_cuts_a_long_stream_into_utterances():
    # 40 ms frames: speech 0-1.6 s, pause 1.6-3.2 s, speech 3.2-4.8 s, then silence to 7 s.
    schedule = np.zeros(175, dtype=bool)
    schedule[:40] = True
    schedule[80:120] = True
    rec = tiny_recognizer(EndpointConfig(mode="vad", rule2_trailing_silence_s=1.2))
    rec.vad = ScriptedVAD(schedule)
    s = rec.new_stream()
    feed_randomly(rec, s, signal(7.0), np.random.default_rng(3))
    rec.finish(s)
    finals = finals_of(rec.events(s))
    # Each pause is detected 1.2 s after speech stops (frame 40 + 30 frames, frame 120 + 30);
    # the tail after 6.0 s is too short for rule 2 and is flushed by finish().
    assert [(f.reason, f.detected_at) for f in finals[:2]] == [("rule2", pytest.approx(2.8)),
                                                              ("rule2", pytest.approx(6.0))]
    assert [f.reason for f in finals[2:]] in ([], ["eos"])
    for a, b in zip(finals, finals[1:]):
        assert a.end <= b.start and a.detected_at < b.detected_at
    assert finals[-1].end <= 7.0


def test_blank_endpointer_and_max_utterance_rule():
    # A CTC head that only ever says blank: rule 1 resets, no final, nothing grows.
    rec = tiny_recognizer(EndpointConfig(mode="blank", rule1_trailing_silence_s=0.8))
    with torch.no_grad():
        rec.asr.out.bias[0] = 1e4
    s = rec.new_stream()
    feed_randomly(rec, s, signal(3.0), np.random.default_rng(4))
    rec.finish(s)
    assert rec.events(s) == []
    assert s.endpointer.utterance_frames < 20

    # rule 3: VAD says speech all the time, so only the length limit cuts (every 1.0 s).
    rec = tiny_recognizer(EndpointConfig(mode="vad", rule3_max_utterance_s=1.0))
    rec.vad = ScriptedVAD(np.ones(200, dtype=bool))
    s = rec.new_stream()
    feed_randomly(rec, s, signal(4.0), np.random.default_rng(5))
    finals = finals_of(rec.events(s))
    assert [f.reason for f in finals] == ["rule3"] * 3
    assert [f.detected_at for f in finals] == pytest.approx([1.0, 2.0, 3.0])


def test_endpointer_rules():
    ep = Endpointer(EndpointConfig(rule1_trailing_silence_s=1.0, rule2_trailing_silence_s=0.4,
                                   rule3_max_utterance_s=2.0), frame_shift_s=0.04)
    for _ in range(9):
        ep.update(True)
    assert ep.check(has_words=True) is None
    ep.update(True)
    assert ep.check(has_words=True) == "rule2" and ep.check(has_words=False) is None
    for _ in range(15):
        ep.update(True)
    assert ep.check(has_words=False) == "rule1"
    ep.reset()
    for _ in range(50):
        ep.update(False)
    assert ep.check(has_words=True) == "rule3"
    with pytest.raises(ValueError, match="endpoint.mode"):
        EndpointConfig(mode="energy")


def test_endpointer_min_speech_ignores_short_bursts():
    """With min_speech_s, speech runs shorter than it inside trailing non-speech (noise the VAD
    head scores as speech) pause the silence count instead of restarting it; a long enough run
    restarts it; 0 keeps the plain rule (any speech frame restarts)."""
    def trailing_after(frames: str, min_speech_s: float) -> int:
        ep = Endpointer(EndpointConfig(min_speech_s=min_speech_s), frame_shift_s=0.04)
        for f in frames:
            ep.update(nonspeech=f == ".")
        return ep.trailing_nonspeech_frames

    bursts = "#####" + "....##....#...." + "##" + "...."  # speech, then silence with 1-2 frame bursts
    assert trailing_after(bursts, 0.0) == 4
    assert trailing_after(bursts, 0.12) == 16  # every burst is shorter than 3 frames: 16 silent frames
    assert trailing_after("....###..", 0.12) == 2  # a 3-frame run is speech: the count restarts
    ep = Endpointer(EndpointConfig(rule2_trailing_silence_s=0.4, min_speech_s=0.12), frame_shift_s=0.04)
    for f in "###" + "....#.....":
        ep.update(nonspeech=f == ".")
    assert ep.check(has_words=True) is None  # 9 silent frames: the burst paused the count
    ep.update(nonspeech=True)
    assert ep.check(has_words=True) == "rule2"  # 10 silent frames = 0.4 s
    # A phrase after an 8-frame pause: its first 2 frames must not complete a 10-frame rule 2.
    ep.reset()
    for f in "###" + "........" + "##":
        ep.update(nonspeech=f == ".")
        assert ep.check(has_words=True) is None
    ep.update(nonspeech=False)  # the run reaches 3 frames: speech, the count restarts
    assert ep.trailing_nonspeech_frames == 0
    ep.reset()
    assert ep.trailing_nonspeech_frames == 0 and ep.speech_run_frames == 0
    # Mode blank ignores it: a one-frame non-blank is a token, not a burst.
    assert Endpointer(EndpointConfig(mode="blank", min_speech_s=0.12), 0.04).min_speech_frames == 1
    with pytest.raises(ValueError, match="min_speech_s"):
        EndpointConfig(min_speech_s=-0.1)


def test_long_stream_memory_is_bounded():
    rec = tiny_recognizer(EndpointConfig(rule3_max_utterance_s=2.0))
    s = rec.new_stream()
    wav = signal(1.0)
    for _ in range(20):  # 20 s of audio
        rec.accept(s, wav)
        while rec.ready(s):
            rec.step([s])
        assert s.audio.frame_count < rec.window_frames
        # less than one window is left (samples are featurized only when a window needs them)
        assert s.buffered_seconds < (rec.window_frames * 160 + 400) / 16000
        assert len(s.utterance.tokens) <= 2.0 / 0.04
    assert rec.cache_of(s).keys.shape[3] == CHUNK * LEFT
    assert len(finals_of(rec.events(s))) >= 8


def test_cache_pool_applies_updates_in_place_as_the_cache_would_functionally():
    """`CachePool.apply` (in place, the server's path) leaves a row exactly as `EncoderCache.updated`
    (the functional path, what ONNX exports) would: over more chunks than the ring holds, with some
    rows right-padded (frames not written) and one row skipping a chunk."""
    from mtspeech.encoders.cache import CacheUpdate
    from mtspeech.streaming.encoder import CachePool

    encoder = tiny_recognizer().model.encoder
    pool = CachePool(lambda n: encoder.init_cache(n, CHUNK, LEFT))
    rows = [pool.acquire() for _ in range(3)]
    want = encoder.init_cache(3, CHUNK, LEFT)
    g = torch.Generator().manual_seed(0)
    for step in range(LEFT + 3):  # the ring wraps around
        lens = torch.tensor([CHUNK, CHUNK - 1 if step % 2 else CHUNK, 0 if step == 1 else CHUNK])
        valid = torch.arange(CHUNK).unsqueeze(0) < lens.unsqueeze(1)
        shape = (*want.keys.shape[:3], CHUNK, want.keys.shape[4])
        update = CacheUpdate(keys=torch.randn(shape, generator=g), values=torch.randn(shape, generator=g),
                             valid=valid, conv=torch.randn(want.conv.shape, generator=g),
                             frames_seen=want.frames_seen + lens)
        want = want.updated(update)
        pool.apply(rows, update)
        got = pool.take(rows)
        for f in ("keys", "values", "key_valid", "conv", "frames_seen"):
            assert torch.equal(getattr(got, f), getattr(want, f)), (step, f)
    assert want.key_valid.all() and int(want.frames_seen[2]) == (LEFT + 2) * CHUNK


def test_cache_pool_rows_are_taken_put_reused_and_freed_with_their_stream():
    import gc

    from mtspeech.streaming.encoder import CachePool

    encoder = tiny_recognizer().model.encoder
    pool = CachePool(lambda n: encoder.init_cache(n, CHUNK, LEFT))
    rows = [pool.acquire() for _ in range(11)]  # past the first 8: the pool grows, rows survive
    assert sorted(rows) == list(range(11)) and pool.capacity == 16
    for r in rows:
        filled = pool.take([r])
        filled.keys.fill_(r)
        filled.key_valid.fill_(True)
        filled.frames_seen.fill_(r)
        pool.put([r], filled)
    pool.acquire()  # growth again would copy; rows keep their contents either way
    got = pool.take([7, 2, 10])
    assert [int(x) for x in got.frames_seen] == [7, 2, 10]
    assert torch.all(got.keys[:, 1] == 2) and got.key_valid.all()
    pool.release(2)
    again = pool.acquire()  # a released row comes back blank
    assert again == 2 and not pool.take([2]).key_valid.any() and int(pool.take([2]).frames_seen) == 0
    # A recognizer's stream returns its row when finished, or when dropped unfinished.
    rec = tiny_recognizer()
    a, b = rec.new_stream(), rec.new_stream()
    taken = {a.cache_row, b.cache_row}
    rec.finish(a)
    del b
    gc.collect()
    c, d = rec.new_stream(), rec.new_stream()
    assert {c.cache_row, d.cache_row} == taken


def test_misuse_is_reported():
    rec = tiny_recognizer()
    s = rec.new_stream()
    with pytest.raises(ValueError, match="not ready"):
        rec.step([s])
    with pytest.raises(ValueError, match="NaN"):
        rec.accept(s, np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="mono"):
        rec.accept(s, np.zeros((2, 10), dtype=np.float32))
    rec.finish(s)
    with pytest.raises(ValueError, match="finished"):
        rec.accept(s, np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="sample_rate"):
        rec.new_stream(sample_rate=0)
