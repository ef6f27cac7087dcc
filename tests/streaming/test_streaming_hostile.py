"""StreamingRecognizer under hostile input: sample rates sharing no factor with 16 kHz,
extreme sample values, clients faster than real time, endless utterances.

Memory is process RSS (tracemalloc cannot see soxr's or torch's buffers): the peak (VmHWM)
is reset through /proc/self/clear_refs before the measured work.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mtspeech.streaming import MAX_ABS_SAMPLE, SAMPLE_RATE, FinalEvent, PartialEvent, StreamResampler
from test_streaming import feed_randomly, finals_of
from tiny_asr import CHUNK, LEFT, signal, tiny_recognizer

torch.set_num_threads(1)

ODD_RATES = (8001, 22050, 44100, 95999)


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _resample_in_chunks(rate: int, x: np.ndarray, chunk_ms: int = 100) -> np.ndarray:
    r = StreamResampler(rate)
    n = rate * chunk_ms // 1000
    return np.concatenate([r.push(x[i : i + n]) for i in range(0, len(x), n)] + [r.flush()])


@pytest.mark.parametrize("rate", ODD_RATES)
def test_odd_sample_rates_resample_fast_in_little_memory(rate):
    x = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(3 * rate) / rate)).astype(np.float32)
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS to the current one
        f.write("5")
    rss_before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    y = _resample_in_chunks(rate, x)
    elapsed = time.perf_counter() - t0
    grown_mb = _status_mb("VmHWM") - rss_before
    assert elapsed < 0.5, f"{rate} Hz: 3 s of audio took {elapsed:.2f} s to resample"
    assert grown_mb < 100, f"{rate} Hz: peak RSS grew {grown_mb:.0f} MB"
    assert abs(len(y) - round(len(x) * SAMPLE_RATE / rate)) <= 1
    # The tone keeps its frequency: FFT peak at 1 kHz (bins of 1/3 Hz).
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(y)
    assert peak_hz == pytest.approx(1000, abs=0.5)


@pytest.mark.parametrize("rate, value", [(44100, 3e38), (16000, 1e30), (16000, np.nan),
                                         (8001, np.inf), (16000, -np.inf), (22050, -17.0)])
def test_extreme_samples_are_rejected(rate, value):
    rec = tiny_recognizer()
    s = rec.new_stream(sample_rate=rate)
    x = signal(0.5, rate=rate)
    x[1234] = value
    with pytest.raises(ValueError, match="MAX_ABS_SAMPLE") as err:
        rec.accept(s, x)
    assert "[1234]" in str(err.value), "the message names the offending sample"
    assert s.samples_accepted == 0 and s.buffered_seconds == 0
    # A value just inside the bound is audio, however loud.
    rec.accept(s, np.full(100, MAX_ABS_SAMPLE, dtype=np.float32))


@pytest.mark.parametrize("rate", [16000, 44100])
def test_rejected_chunk_leaves_the_stream_as_it_was(rate):
    rec = tiny_recognizer()
    wav = signal(3.0, rate=rate)
    clean, hit = rec.new_stream(sample_rate=rate), rec.new_stream(sample_rate=rate)
    bad = signal(0.2, seed=1, rate=rate)
    bad[100] = 1e30
    half = len(wav) // 2
    for s in (clean, hit):
        feed_randomly(rec, s, wav[:half], np.random.default_rng(0), rate=rate)
        if s is hit:
            with pytest.raises(ValueError, match="1e\\+30"):
                rec.accept(s, bad)
        feed_randomly(rec, s, wav[half:], np.random.default_rng(1), rate=rate)
        rec.finish(s)
    want, got = finals_of(rec.events(clean)), finals_of(rec.events(hit))
    assert want and [f.tokens for f in got] == [f.tokens for f in want]
    assert [f.text for f in got] == [f.text for f in want]


def test_fast_client_featurizes_one_window_at_a_time():
    rec = tiny_recognizer()
    wav = signal(60.0)
    s = rec.new_stream()
    rec.accept(s, wav)  # a minute at once, far faster than real time
    assert s.buffered_seconds == pytest.approx(60.0)
    rec.step([s])
    assert s.audio.frame_count <= rec.window_frames + rec.stride_frames
    assert s.buffered_seconds == pytest.approx(60.0 - rec.stride_frames * 0.01, abs=0.011)
    while rec.ready(s):
        rec.step([s])
        assert s.audio.frame_count <= rec.window_frames
    rec.finish(s)
    got = finals_of(rec.events(s))
    paced = rec.new_stream()
    feed_randomly(rec, paced, wav, np.random.default_rng(7))
    rec.finish(paced)
    want = finals_of(rec.events(paced))
    assert len(want) > 1
    assert [(f.tokens, f.words, f.reason) for f in got] == [(f.tokens, f.words, f.reason) for f in want]


def _offline_frame_ids(rec, wav: np.ndarray) -> np.ndarray:
    """Greedy CTC label of every encoder frame (T',), chunk-masked full forward."""
    with torch.inference_mode():
        feats, lens = rec.model.features(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        enc = rec.model.encoder(feats, lens, chunk_frames=CHUNK, left_chunks=LEFT)
        logits = rec.model.tasks["asr"](enc.layers[-1], enc.lens)
    return logits[0].argmax(-1).numpy()


def _collapse(ids: np.ndarray, blank: int = 0) -> tuple[int, ...]:
    out, prev = [], blank
    for i in ids.tolist():
        if i != blank and i != prev:
            out.append(i)
        prev = i
    return tuple(out)


def test_endpointing_off_still_bounds_the_utterance():
    # 3 minutes with endpointing off used to be one utterance: every partial re-rendered the
    # whole transcript so far. Now rule 3 (20 s) cuts it and partials stay one window long.
    rec = tiny_recognizer()
    wav = signal(180.0)
    s = rec.new_stream(endpointing=False, interim=True)
    for i in range(0, len(wav), SAMPLE_RATE):
        rec.accept(s, wav[i : i + SAMPLE_RATE])
        while rec.ready(s):
            rec.step([s])
    rec.finish(s)
    events = rec.events(s)
    partials = [len(e.text) for e in events if isinstance(e, PartialEvent)]
    finals = [e for e in events if isinstance(e, FinalEvent)]
    quarter = len(partials) // 4
    assert max(partials[-quarter:]) < 1.5 * max(partials[:quarter])
    assert max(partials) <= max(len(f.text) for f in finals)
    assert len(finals) >= 180 / 20 - 1
    assert {f.reason for f in finals[:-1]} == {"rule3"} and finals[-1].reason == "eos"
    assert all(f.detected_at - f.start <= 20.0 + 1e-6 for f in finals)
    # Together the finals are the offline greedy decoding, cut where each final was detected.
    ids = _offline_frame_ids(rec, wav)
    cuts = [0] + [round(f.detected_at / rec.frame_shift_s) for f in finals]
    assert cuts[-1] == len(ids)
    assert [f.tokens for f in finals] == [_collapse(ids[a:b]) for a, b in zip(cuts, cuts[1:])]
