"""Energy-based speech segments for corpora without speech/non-speech ground truth.

Used by `prepare librispeech` when no `.segments.txt` sidecar exists (real LibriSpeech).
Method (documented in docs/data.md):

1. frame log energy, 25 ms windows every 10 ms: `10 log10(mean(x^2) + 1e-10)` dB;
2. threshold `max(peak_db - dynamic_range_db, floor_db + floor_margin_db)` where `peak_db`
   is the 99th and `floor_db` the 5th percentile of frame energies, so the threshold sits
   above the file's noise floor but never more than `dynamic_range_db` below its loudest part;
3. hangover: silences shorter than `min_silence_s` inside speech are bridged (speech pauses,
   stop closures), speech runs shorter than `min_speech_s` are dropped (clicks), and each
   segment is widened by `pad_s` on both sides (weak onsets and decays), clipped to the file.

These are pseudo-labels: good on read speech at LibriSpeech's SNR, not a trained VAD.
"""

from __future__ import annotations

import math

import numpy as np


def frame_energy_db(wav: np.ndarray, sample_rate: int, frame_s: float = 0.025,
                    hop_s: float = 0.010) -> np.ndarray:
    """(num_frames,) log energy in dB of frames `[hop*i, hop*i + frame)` of a mono (S,) signal."""
    frame = int(round(frame_s * sample_rate))
    hop = int(round(hop_s * sample_rate))
    wav = np.asarray(wav)
    if len(wav) < frame:
        return np.zeros(0)
    n = (len(wav) - frame) // hop + 1
    # Frames and hops are whole blocks of gcd(frame, hop) samples (80 at 16 kHz): square-sum
    # each block once in float64 (einsum: no (S,) temporaries), then add whole blocks per
    # frame. A running sum over samples did the same several times slower (prepare's hot loop).
    block = math.gcd(frame, hop)
    blocks = wav[: (n - 1) * hop + frame].reshape(-1, block)
    sums = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(sums)])
    starts = np.arange(n) * (hop // block)
    power = (csum[starts + frame // block] - csum[starts]) / frame
    return 10.0 * np.log10(np.maximum(power, 0.0) + 1e-10)


def percentile_sorted(ordered: np.ndarray, q: float) -> float:
    """`np.percentile(x, q)` (linear method), bit for bit, of an ascending-sorted (N,) `x`.

    One sort serves both thresholds; two np.percentile calls were about half the detector's
    time (cProfile) in its generic machinery.
    """
    virtual = (len(ordered) - 1) * (q / 100)
    below = int(virtual)
    gamma = virtual - below
    a = float(ordered[below])
    b = float(ordered[min(below + 1, len(ordered) - 1)])
    # numpy's _lerp: interpolate from the nearer end, so that gamma = 1 gives b exactly.
    return a + (b - a) * gamma if gamma < 0.5 else b - (b - a) * (1 - gamma)


def energy_segments(
    wav: np.ndarray,
    sample_rate: int,
    *,
    frame_s: float = 0.025,
    hop_s: float = 0.010,
    dynamic_range_db: float = 35.0,
    floor_margin_db: float = 12.0,
    min_silence_s: float = 0.25,
    min_speech_s: float = 0.10,
    pad_s: float = 0.05,
) -> list[list[float]]:
    """Speech segments `[[start_s, end_s], ...]` of a mono (S,) signal by frame energy.

    Returns `[]` for an all-silent or too-short signal. Segments are sorted, disjoint and
    within `[0, len(wav) / sample_rate]`.
    """
    energy = frame_energy_db(wav, sample_rate, frame_s, hop_s)
    if energy.size == 0:
        return []
    ordered = np.sort(energy)
    peak_db, floor_db = percentile_sorted(ordered, 99), percentile_sorted(ordered, 5)
    if peak_db <= -90.0:  # digital silence (the 1e-10 floor is -100 dB)
        return []
    threshold = max(peak_db - dynamic_range_db, floor_db + floor_margin_db)
    active = energy > threshold
    # If the floor margin pushes the threshold above the peak (a stationary signal: a tone,
    # or speech with no pause at all), everything above the floor is speech.
    if not active.any():
        active = energy > floor_db - 1e-9

    # Runs of active frames as [first, last] frame indices.
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    starts = np.nonzero(edges == 1)[0]
    ends = np.nonzero(edges == -1)[0]  # exclusive

    hop = hop_s
    frame = frame_s
    runs: list[list[float]] = []
    for s, e in zip(starts, ends):
        start_t, end_t = s * hop, (e - 1) * hop + frame
        if runs and start_t - runs[-1][1] < min_silence_s:
            runs[-1][1] = end_t  # bridge a short pause
        else:
            runs.append([start_t, end_t])
    total = len(wav) / sample_rate
    out: list[list[float]] = []
    for start_t, end_t in runs:
        if end_t - start_t < min_speech_s:
            continue
        start_t, end_t = max(0.0, start_t - pad_s), min(total, end_t + pad_s)
        if out and start_t <= out[-1][1]:
            out[-1][1] = end_t
        else:
            out.append([start_t, end_t])
    return [[round(float(s), 4), round(float(e), 4)] for s, e in out]
