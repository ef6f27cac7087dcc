"""Does the loader's synthetic room (`mtspeech.data.augment.room_impulse_response`) match a
geometric room simulator? Ours against pyroomacoustics' shoebox image-source model.

For each target RT60, `--rooms` random shoebox rooms (3-10 × 3-8 × 2.5-4 m, wall absorption
from pyroomacoustics' inverse Sabine formula for that RT60, source and microphone at least
0.5 m from every wall) and as many of our responses in each `data.augment.room_drr` mode
(`fixed`: tail energy equal to the direct path's; `shoebox`: the ratio drawn from a random
room of the same sizes by critical distance) are measured the same way, each aligned at its
direct-path peak:

- **RT60**: Schroeder backward integration, the −5 to −25 dB slope extrapolated to −60 dB
  (T20: shoebox responses are cut where the image-source order ends, so T30 would read the cut);
- **DRR**: direct-to-reverberant ratio, energy within 2.5 ms of the direct peak against the
  rest (dB);
- **C50**: clarity, energy of the first 50 ms against the rest (dB).

Baseline: pyroomacoustics, measured in the same run; (Δ) is ours minus it.
pyroomacoustics is an optional peer (`MTSPEECH_PEERS=1 bash scripts/setup.sh`), never needed
by the tests.

    python benchmarks/rir_match.py --rooms 20 --out rir.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys

import numpy as np

from mtspeech.data.geometry import SAMPLE_RATE


def align(rir: np.ndarray) -> np.ndarray:
    """The response from its direct-path peak on."""
    return rir[int(np.argmax(np.abs(rir))):]


def t20(rir: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """RT60 from the −5 to −25 dB slope of the Schroeder curve, extrapolated to −60 dB."""
    energy = np.cumsum(rir[::-1] ** 2)[::-1]
    curve = 10 * np.log10(energy / energy[0] + 1e-30)
    idx = np.flatnonzero((curve <= -5) & (curve >= -25))
    if len(idx) < 2:
        return float("nan")
    slope = np.polyfit(idx / sample_rate, curve[idx], 1)[0]  # dB per second
    return float(-60.0 / slope)


def ratio_db(rir: np.ndarray, split_s: float, sample_rate: int = SAMPLE_RATE) -> float:
    """10 log10 of the energy before `split_s` (after the peak) over the energy after it."""
    k = max(1, int(round(split_s * sample_rate)))
    early, late = np.sum(rir[:k] ** 2), np.sum(rir[k:] ** 2)
    return float(10 * math.log10(early / late)) if late > 0 else float("inf")


def measure(rir: np.ndarray) -> dict:
    h = align(rir)
    return {"rt60": t20(h), "drr": ratio_db(h, 0.0025), "c50": ratio_db(h, 0.050)}


def shoebox_rir(rt60: float, rng: np.random.Generator) -> np.ndarray:
    import pyroomacoustics as pra

    dims = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.5, 4)])
    absorption, max_order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=max_order)
    room.add_source(rng.uniform(0.5, dims - 0.5))
    room.add_microphone(rng.uniform(0.5, dims - 0.5))
    room.compute_rir()
    return np.asarray(room.rir[0][0], dtype=np.float64)


def run(args) -> dict:
    from mtspeech.data.augment import room_impulse_response, shoebox_drr_db

    rng = np.random.default_rng(args.seed)
    rows = []
    for rt60 in args.rt60:
        pra = [measure(shoebox_rir(rt60, rng)) for _ in range(args.rooms)]
        fixed = [measure(room_impulse_response(rt60, SAMPLE_RATE, rng)) for _ in range(args.rooms)]
        drawn = [measure(room_impulse_response(rt60, SAMPLE_RATE, rng, shoebox_drr_db(rt60, rng)))
                 for _ in range(args.rooms)]
        row = {"rt60_target": rt60}
        for name, runs in (("pyroomacoustics", pra), ("fixed", fixed), ("shoebox", drawn)):
            for key in ("rt60", "drr", "c50"):
                vals = [r[key] for r in runs if math.isfinite(r[key])]
                row[f"{name}_{key}"] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals),
                                        "min": min(vals), "max": max(vals)}
        rows.append(row)
        print(render_row(row), flush=True)
    return {"benchmark": "rir_match", "rooms_per_rt60": args.rooms, "seed": args.seed, "rows": rows}


def render_row(row: dict) -> str:
    """One line per target RT60 and measure: pyroomacoustics mean ± std [range], then each of our
    modes' mean ± std and its difference from pyroomacoustics."""
    lines = []
    for key in ("rt60", "drr", "c50"):
        p = row[f"pyroomacoustics_{key}"]
        cells = [f"{row['rt60_target']:.1f}", key.upper(), f"{p['mean']:6.2f} ± {p['std']:4.2f} [{p['min']:6.2f}, {p['max']:6.2f}]"]
        for mode in ("fixed", "shoebox"):
            o = row[f"{mode}_{key}"]
            cells.append(f"{o['mean']:6.2f} ± {o['std']:4.2f} ({o['mean'] - p['mean']:+6.2f})")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


HEADER = ("target RT60 s | measure | pyroomacoustics [range] | ours, room_drr fixed (Δ) | "
          "ours, room_drr shoebox (Δ)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rt60", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8],
                    help="target RT60s (the loader draws from 0.2-0.8 s by default)")
    ap.add_argument("--rooms", type=int, default=20, help="responses per target and generator")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("pyroomacoustics") is None:
        print("rir_match: pyroomacoustics is not installed (MTSPEECH_PEERS=1 bash scripts/setup.sh)",
              file=sys.stderr)
        return 2
    print(HEADER)
    result = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
