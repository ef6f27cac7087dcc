"""The energy detector against its previous implementation: same segments, and how much faster.

`mtspeech.data.segments.energy_segments` now sums squares in blocks and takes both
percentiles from one sort. The previous version (a running sum over every sample and two
`np.percentile` calls) is kept below as the reference. For every audio file of a corpus this
prints how many files get identical segments and the CPU ms per file of each.

    python benchmarks/rehearsal_detector.py --corpus /work/demo/data/corpus
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from mtspeech.data.segments import energy_segments


def reference_segments(wav: np.ndarray, sample_rate: int) -> list[list[float]]:
    """The detector as it was before (defaults only), for comparison."""
    frame, hop = int(round(0.025 * sample_rate)), int(round(0.010 * sample_rate))
    x = np.asarray(wav, dtype=np.float64)
    if len(x) < frame:
        return []
    n = (len(x) - frame) // hop + 1
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.arange(n) * hop
    energy = 10.0 * np.log10(np.maximum((csum[starts + frame] - csum[starts]) / frame, 0.0) + 1e-10)
    peak_db, floor_db = float(np.percentile(energy, 99)), float(np.percentile(energy, 5))
    if peak_db <= -90.0:
        return []
    active = energy > max(peak_db - 35.0, floor_db + 12.0)
    if not active.any():
        active = energy > floor_db - 1e-9
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    runs: list[list[float]] = []
    for s, e in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]):
        start_t, end_t = s * 0.010, (e - 1) * 0.010 + 0.025
        if runs and start_t - runs[-1][1] < 0.25:
            runs[-1][1] = end_t
        else:
            runs.append([start_t, end_t])
    total, out = len(x) / sample_rate, []
    for start_t, end_t in runs:
        if end_t - start_t < 0.10:
            continue
        start_t, end_t = max(0.0, start_t - 0.05), min(total, end_t + 0.05)
        if out and start_t <= out[-1][1]:
            out[-1][1] = end_t
        else:
            out.append([start_t, end_t])
    return [[round(float(s), 4), round(float(e), 4)] for s, e in out]


def cpu_ms(fn, wavs) -> tuple[list, float]:
    """(results, median CPU ms per file over 3 passes)."""
    runs = []
    for _ in range(3):
        t0 = time.process_time()
        out = [fn(w, r) for w, r in wavs]
        runs.append(time.process_time() - t0)
    return out, 1000 * sorted(runs)[1] / len(wavs)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="folder searched for *.flac / *.wav")
    args = ap.parse_args(argv)
    files = sorted(p for p in Path(args.corpus).rglob("*") if p.suffix in (".flac", ".wav"))
    if not files:
        raise SystemExit(f"no audio files under {args.corpus}")
    wavs = [sf.read(f, dtype="float32") for f in files]
    ref, ref_ms = cpu_ms(reference_segments, wavs)
    new, new_ms = cpu_ms(energy_segments, wavs)
    result = {"files": len(files), "identical_segments": sum(a == b for a, b in zip(ref, new)),
              "reference_ms_per_file": round(ref_ms, 3), "current_ms_per_file": round(new_ms, 3),
              "mean_duration_s": round(sum(len(w) / r for w, r in wavs) / len(wavs), 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
