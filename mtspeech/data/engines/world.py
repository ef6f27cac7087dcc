"""Voice conversion through the WORLD vocoder: a new voice from any engine's output.

WORLD (`pyworld`) splits speech into F0, a spectral envelope and an aperiodicity map, frame
by frame (5 ms). A `Conversion` warps each and resynthesises:

- `f0_scale` multiplies F0 (voice pitch);
- `formant_warp` stretches the spectral envelope along frequency: a value above 1 moves every
  formant up by that factor, as a shorter vocal tract does (a child's or a smaller adult's),
  below 1 down, as a longer one;
- `breathiness` raises the aperiodicity map to the power 1 / breathiness (values in [0, 1]),
  so above 1 more of each band is noise (a breathier voice), below 1 less (a pressed one).

A converted voice is a new speaker (its own id, sex and split; `mtspeech.data.voices`).
The result depends only on the input and the conversion (WORLD is deterministic).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Conversion:
    f0_scale: float = 1.0
    formant_warp: float = 1.0
    breathiness: float = 1.0

    def __post_init__(self) -> None:
        for name in ("f0_scale", "formant_warp", "breathiness"):
            value = getattr(self, name)
            if not 0.25 <= value <= 4.0:
                raise ValueError(f"Conversion.{name}={value}: expected a factor in [0.25, 4]")

    @property
    def tag(self) -> str:
        """A short label of the warps, e.g. `f1.30w1.08b0.80`."""
        return f"f{self.f0_scale:.2f}w{self.formant_warp:.2f}b{self.breathiness:.2f}"


def _pyworld():
    try:
        with warnings.catch_warnings():  # pyworld 0.3 imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import pyworld
    except ImportError as e:
        raise ImportError("voice conversion needs the `pyworld` package (in requirements.lock: "
                          "bash scripts/setup.sh installs it)") from e
    return pyworld


def warp_envelope(envelope: np.ndarray, factor: float) -> np.ndarray:
    """(frames, bins) envelope with its frequency axis stretched by `factor`: the output at
    bin k is the input at k / factor (linear interpolation; past the top, the top bin)."""
    bins = envelope.shape[1]
    source = np.minimum(np.arange(bins) / factor, bins - 1)
    lo = np.floor(source).astype(int)
    hi = np.minimum(lo + 1, bins - 1)
    frac = source - lo
    return envelope[:, lo] * (1 - frac) + envelope[:, hi] * frac


def convert(wav: np.ndarray, conversion: Conversion, sample_rate: int) -> np.ndarray:
    """float32 (S',) : mono (S,) `wav` analysed by WORLD (DIO + StoneMask F0, CheapTrick, D4C),
    warped by `conversion` and resynthesised at the same rate (S' ~ S, whole 5 ms frames)."""
    pw = _pyworld()
    x = np.ascontiguousarray(wav, dtype=np.float64)
    f0, times = pw.dio(x, sample_rate)
    f0 = pw.stonemask(x, f0, times, sample_rate)
    envelope = pw.cheaptrick(x, f0, times, sample_rate)
    aperiodicity = pw.d4c(x, f0, times, sample_rate)
    envelope = warp_envelope(envelope, conversion.formant_warp)
    aperiodicity = np.clip(aperiodicity, 1e-6, 1.0) ** (1.0 / conversion.breathiness)
    out = pw.synthesize(f0 * conversion.f0_scale, np.ascontiguousarray(envelope),
                        np.ascontiguousarray(aperiodicity), sample_rate)
    return out.astype(np.float32)
