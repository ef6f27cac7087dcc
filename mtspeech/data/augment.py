"""Waveform augmentation in the loader: additive noise at a sampled SNR, room reverberation, gain,
a formant shift that makes a new voice, and a telephone channel.

Every transform but padding keeps time where it was, so the labels follow the audio unchanged: the
speech segments of the VAD task, the words. Noise, a room and loudness do not change who
speaks, so the speaker label stays; a formant shift does (it moves the vocal tract's
resonances, the cue a speaker model reads most), so `Augmenter.changes_voice` tells the
dataset to drop that label, as it does for speed perturbation. What an utterance gets is a
pure function of (seed, index), so a batch is augmented identically whatever worker loads
it and after a resume.

Padding (`pad_prob`, `pad_s`) is the one transform that moves time: it adds silence at both
ends before the other transforms, so the noise covers it. `Augmenter.padding` says how much,
and the dataset shifts the speech segments by the front pad (`padded_utterance`).

Noise kinds:
- `white`, `pink` (1/f power), `brown` (1/f²): Gaussian noise shaped in the frequency domain;
- `babble`: a mix of 3-6 other utterances of the *same* split (the training set for the
  trainer), so no test speech ever leaks into training.

The SNR is measured against the speech frames when the utterance has speech segments (a
mostly silent file is not given a quiet noise), else against the whole signal.

Reverberation convolves with a synthetic room impulse response: Gaussian noise under an
exponential envelope whose energy falls 60 dB in `rt60` seconds, after a unit direct path at
t = 0 (so nothing is delayed). tests/data/test_augment.py checks, by Schroeder backward
integration, that the generated responses decay at the requested RT60.

Formant shift (VTLP-style, Jaitly & Hinton 2013, but applied to the spectral envelope only):
per 32 ms STFT frame the envelope is the cepstrally smoothed log spectrum (quefrencies below
2 ms, shorter than any pitch period up to 500 Hz); it is warped along frequency by the VTLP
piecewise-linear map (f → α f up to a knee, then linearly to Nyquist), and each frame is
multiplied by warped / original envelope with its phase kept. The formants move by α, the
harmonics (pitch) and the time axis stay where they were; the resampling trick would move
pitch and duration too. The draw is independent of `prob`: `formant_prob` is the share of
all training utterances that become a new voice.

Speaker augmentation (`formant_speakers`, after Yamamoto et al. 2019, who made new speakers
of speed-perturbed copies): with fixed warp factors listed there, a shifted copy of speaker
S at factor α is labelled as a speaker of its own, `S~vtlpα` (`voice_label`), instead of
losing its label; the speaker task's label space gets every such speaker
(`augmented_speakers`). A speaker head trained on 28 voices then sees 28 x (1 + K), each
new one a consistent voice, which is what a head must tell apart on voices it never heard.

Telephone channel (`telephone_prob`, `mtspeech.data.telephone`: 8 kHz, 300-3400 Hz, a call
level, μ-law, back to 16 kHz as the server resamples a call): last, since the network carries
what the phone's microphone picked up, room and noise included. Like `formant_prob`, a share
of all training utterances on a stream of its own; the speaker label stays (same caller).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from mtspeech.data.geometry import SAMPLE_RATE
from mtspeech.data.telephone import LEVEL_DBOV, draw_level_dbov, telephone_channel

NOISE_KINDS = ("white", "pink", "brown", "babble")
ROOM_DRR = ("fixed", "shoebox")


@dataclass(frozen=True)
class AugmentConfig:
    """`data.augment` (off when absent). Ranges are (low, high), drawn uniformly."""

    prob: float = 0.5  # share of training utterances augmented at all
    noise: tuple[str, ...] = NOISE_KINDS  # kinds drawn uniformly; () for no noise
    snr_db: tuple[float, float] = (0.0, 30.0)
    reverb_prob: float = 0.3  # share of augmented utterances that get a room
    rt60_s: tuple[float, float] = (0.2, 0.8)
    gain_db: tuple[float, float] = (-6.0, 6.0)
    babble_utterances: tuple[int, int] = (3, 6)
    formant_prob: float = 0.0  # share of training utterances given a new voice (speaker label dropped)
    formant_warp: tuple[float, float] = (0.85, 1.15)  # VTLP factor α: formants move to α × f
    # fixed factors instead, each making a new *labelled* speaker of every training speaker
    # (speaker augmentation, see the module docstring); () keeps formant_warp and drops labels
    formant_speakers: tuple[float, ...] = ()
    # first epoch (0-based) that is augmented; the ones before train on clean audio. Noise from
    # the first update kept CTC on its blank plateau for 5 more epochs of the demo (README).
    start_epoch: int = 0
    # first epoch (0-based) that is clean again, so the last epochs tune to clean audio; 0 (the
    # default): augmented to the end.
    stop_epoch: int = 0
    # first epoch whose augmented utterances may get a room (rooms from max(this, start_epoch));
    # before it `reverb_prob` counts as 0. Rooms cost clean accuracy (docs/results/grid-room-layer0).
    room_start_epoch: int = 0
    # the rooms' direct-to-reverberant ratio: "fixed" (tail energy = direct path, about 0 dB) or
    # "shoebox" (drawn per room as a shoebox room gives it; benchmarks/rir_match.py measures both)
    room_drr: str = "fixed"
    # share of training utterances (with speech segments) that get 0-`pad_s` seconds of
    # silence added at each end, drawn per end; the noise then covers it. The VAD head then sees
    # long non-speech stretches in noise, which the corpus's <= 0.7 s edges never show it.
    pad_prob: float = 0.0
    pad_s: tuple[float, float] = (0.5, 2.0)
    # share of ALL training utterances sent through a telephone channel (8 kHz, 300-3400 Hz,
    # μ-law; independent of prob, the speaker label kept), as the server hears a call
    telephone_prob: float = 0.0
    telephone_level_dbov: tuple[float, float] = LEVEL_DBOV  # the calls' RMS level, dB below the codec's full scale

    def __post_init__(self) -> None:
        unknown = sorted(set(self.noise) - set(NOISE_KINDS))
        if unknown:
            raise ValueError(f"data.augment.noise: unknown kind(s) {unknown}; expected some of {NOISE_KINDS}")
        for name in ("prob", "reverb_prob", "formant_prob", "pad_prob", "telephone_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.augment.{name}={getattr(self, name)}: expected a probability in [0, 1]")
        for name in ("snr_db", "rt60_s", "gain_db", "babble_utterances", "formant_warp", "pad_s",
                     "telephone_level_dbov"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"data.augment.{name}=({low}, {high}): expected low <= high")
        if self.room_drr not in ROOM_DRR:
            raise ValueError(f"data.augment.room_drr={self.room_drr!r}: expected one of {ROOM_DRR}")
        for name in ("start_epoch", "stop_epoch", "room_start_epoch"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.augment.{name}={getattr(self, name)}: expected >= 0")
        if 0 < self.stop_epoch <= self.start_epoch:
            raise ValueError(f"data.augment.stop_epoch={self.stop_epoch}: expected 0 (never) or more than "
                             f"start_epoch={self.start_epoch}")
        if self.telephone_level_dbov[1] > 0:
            raise ValueError(f"data.augment.telephone_level_dbov={self.telephone_level_dbov}: expected "
                             "levels <= 0 dBov (the codec's full scale)")
        if self.pad_s[0] < 0:
            raise ValueError(f"data.augment.pad_s={self.pad_s}: expected seconds >= 0")
        if self.rt60_s[0] <= 0 or self.babble_utterances[0] < 1:
            raise ValueError("data.augment: rt60_s must be > 0 and babble_utterances >= 1")
        if not (0.5 <= self.formant_warp[0] and self.formant_warp[1] <= 2.0):
            raise ValueError(f"data.augment.formant_warp={self.formant_warp}: expected factors in [0.5, 2]")
        if any(not 0.5 <= a <= 2.0 or a == 1.0 for a in self.formant_speakers) or \
                len(set(self.formant_speakers)) != len(self.formant_speakers):
            raise ValueError(f"data.augment.formant_speakers={self.formant_speakers}: expected distinct "
                             "factors in [0.5, 2], none of them 1 (the speaker's own voice)")


def for_epoch(config: AugmentConfig | None, epoch: int) -> AugmentConfig | None:
    """The augmentation of training epoch `epoch` (0-based): None before `start_epoch` and from
    `stop_epoch` (when set), without rooms before `room_start_epoch`. With `reverb_prob` 0 the
    room draw is still made, so an utterance's noise and SNR are the same with and without rooms."""
    if config is None or epoch < config.start_epoch or 0 < config.stop_epoch <= epoch:
        return None
    if epoch < config.room_start_epoch and config.reverb_prob > 0:
        return replace(config, reverb_prob=0.0)
    return config


def voice_label(speaker: str, warp: float) -> str:
    """The label of speaker `speaker` formant-shifted by `warp` under speaker augmentation."""
    return f"{speaker}~vtlp{warp:g}"


def augmented_speakers(speakers: Sequence[str], config: AugmentConfig | None) -> list[str]:
    """A speaker task's label space: the training speakers, plus each one at every
    `formant_speakers` factor (sorted; just the speakers when that is off)."""
    extra = [voice_label(s, a) for s in speakers for a in (config.formant_speakers if config else ())]
    return sorted({*speakers, *extra})


@dataclass(frozen=True)
class Recipe:
    """What one utterance gets (None: not that transform)."""

    noise: str | None
    snr_db: float | None
    rt60_s: float | None
    gain_db: float | None
    babble: tuple[int, ...] = ()  # pool indices mixed into babble
    formant_warp: float | None = None  # VTLP factor α of a new voice
    drr_db: float = 0.0  # the room's direct-to-reverberant ratio (with rt60_s)
    telephone_level_dbov: float | None = None  # a telephone channel at this call level


class Augmenter:
    """Applies `AugmentConfig` to waveforms.

    Args:
        config: the ranges and probabilities.
        pool_size: number of utterances babble may draw from (the dataset's own split).
        load: pool index → waveform (S,) at `sample_rate`, or None if unreadable.
        sample_rate: of every waveform.
    """

    def __init__(self, config: AugmentConfig, pool_size: int, load: Callable[[int], torch.Tensor | None],
                 sample_rate: int = SAMPLE_RATE) -> None:
        self.config = config
        self.pool_size = pool_size
        self.load = load
        self.sample_rate = sample_rate

    def recipe(self, seed: int, index: int) -> Recipe | None:
        """The transforms of item `index` under `seed` (a pure function of both)."""
        c = self.config
        formant, phone = self._formant_warp(seed, index), self._telephone_level(seed, index)
        rng = np.random.default_rng([seed & 0xFFFFFFFF, index, 0xA06])
        if rng.random() >= c.prob:
            if formant is None and phone is None:
                return None
            return Recipe(None, None, None, None, formant_warp=formant, telephone_level_dbov=phone)
        kinds = [k for k in c.noise if k != "babble" or self.pool_size > 1]
        noise = str(rng.choice(kinds)) if kinds else None
        babble: tuple[int, ...] = ()
        if noise == "babble":
            n = int(rng.integers(c.babble_utterances[0], c.babble_utterances[1] + 1))
            others = [i for i in rng.choice(self.pool_size, size=min(self.pool_size, n + 1), replace=False)
                      if i != index][:n]
            babble = tuple(int(i) for i in others)
        snr_db = float(rng.uniform(*c.snr_db)) if noise else None
        rt60_s = float(rng.uniform(*c.rt60_s)) if rng.random() < c.reverb_prob else None
        drr_db = 0.0
        if rt60_s is not None and c.room_drr == "shoebox":  # its own stream: the draws above stay
            drr_db = shoebox_drr_db(rt60_s, np.random.default_rng([seed & 0xFFFFFFFF, index, 0xD22]))
        return Recipe(
            noise=noise,
            snr_db=snr_db,
            rt60_s=rt60_s,
            gain_db=float(rng.uniform(*c.gain_db)),
            babble=babble,
            formant_warp=formant,
            drr_db=drr_db,
            telephone_level_dbov=phone,
        )

    def _formant_warp(self, seed: int, index: int) -> float | None:
        """α of item `index`, or None. A stream of its own, so turning formant shifts on
        leaves every other draw of an existing recipe as it was."""
        c = self.config
        if c.formant_prob <= 0:
            return None
        rng = np.random.default_rng([seed & 0xFFFFFFFF, index, 0xF0A])
        if rng.random() >= c.formant_prob:
            return None
        if c.formant_speakers:
            return float(c.formant_speakers[int(rng.integers(len(c.formant_speakers)))])
        return float(rng.uniform(*c.formant_warp))

    def _telephone_level(self, seed: int, index: int) -> float | None:
        """The call level (dBov) of item `index` when it goes through the telephone channel,
        else None. A stream of its own, like the formant draw."""
        c = self.config
        if c.telephone_prob <= 0:
            return None
        rng = np.random.default_rng([seed & 0xFFFFFFFF, index, 0x7E1])
        return draw_level_dbov(rng, c.telephone_level_dbov) if rng.random() < c.telephone_prob else None

    def padding(self, seed: int, index: int) -> tuple[int, int]:
        """(samples before, samples after) of silence item `index` gets under `seed`, (0, 0)
        when it is not padded. A stream of its own, like the formant draw."""
        c = self.config
        if c.pad_prob <= 0:
            return 0, 0
        rng = np.random.default_rng([seed & 0xFFFFFFFF, index, 0x9AD])
        if rng.random() >= c.pad_prob:
            return 0, 0
        front, back = rng.uniform(*c.pad_s, size=2)
        return round(front * self.sample_rate), round(back * self.sample_rate)

    def changes_voice(self, seed: int, index: int) -> bool:
        """Whether item `index` under `seed` becomes another voice (its speaker label no longer holds)."""
        return self._formant_warp(seed, index) is not None

    def new_speaker(self, speaker: str | None, seed: int, index: int) -> str | None:
        """The label of item `index` once it is another voice: its speaker-augmentation
        label (`voice_label`), or None (unknown) when `formant_speakers` is off."""
        warp = self._formant_warp(seed, index)
        if speaker is None or warp is None or not self.config.formant_speakers:
            return None
        return voice_label(speaker, warp)

    def __call__(self, wav: torch.Tensor, seed: int, index: int,
                 speech: Sequence[Sequence[float]] | None = None) -> torch.Tensor:
        """wav (S,) → augmented wav (S,), same length; `speech` segments (seconds) set the SNR reference."""
        r = self.recipe(seed, index)
        if r is None or wav.numel() == 0:
            return wav
        rng = np.random.default_rng([seed & 0xFFFFFFFF, index, 0xB0B])
        x = wav.numpy().astype(np.float64)
        if r.formant_warp is not None:  # first: the voice is the source, the room and noise come after
            x = formant_shift(x, r.formant_warp, self.sample_rate)
        if r.rt60_s is not None:
            x = reverberate(x, room_impulse_response(r.rt60_s, self.sample_rate, rng, r.drr_db))
        if r.noise is not None:
            n = babble(len(x), [self.load(i) for i in r.babble]) if r.noise == "babble" \
                else colored_noise(r.noise, len(x), rng)
            x = add_at_snr(x, n, r.snr_db, speech_mask(len(x), speech, self.sample_rate))
        if r.gain_db is not None:
            x = x * 10 ** (r.gain_db / 20)
        if r.telephone_level_dbov is not None:  # last: the network carries what the phone picked up
            x = telephone_channel(x, self.sample_rate, r.telephone_level_dbov)
        return torch.from_numpy(np.clip(x, -1.0, 1.0).astype(np.float32))


def colored_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise (length,) with power spectrum 1 (white), 1/f (pink) or 1/f² (brown)."""
    white = rng.standard_normal(length)
    if kind == "white" or length < 2:
        return white
    spectrum = np.fft.rfft(white)
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0  # keep DC finite
    exponent = {"pink": 0.5, "brown": 1.0}[kind]  # amplitude ∝ f^-exponent
    shaped = np.fft.irfft(spectrum / f**exponent, n=length)
    return shaped / (shaped.std() + 1e-12)


def babble(length: int, voices: Sequence[torch.Tensor | None]) -> np.ndarray:
    """Sum of the readable `voices`, each looped to `length` and normalised to unit power."""
    out = np.zeros(length)
    for v in voices:
        if v is None or v.numel() == 0:
            continue
        a = np.resize(v.numpy().astype(np.float64), length)  # loops a short utterance
        out += a / (a.std() + 1e-12)
    return out


def speech_mask(length: int, speech: Sequence[Sequence[float]] | None, sample_rate: int) -> np.ndarray | None:
    """Bool (length,) True inside the speech segments, or None (no segments, or none inside)."""
    if not speech:
        return None
    mask = np.zeros(length, dtype=bool)
    for start, end in speech:
        mask[max(0, int(start * sample_rate)): max(0, int(end * sample_rate))] = True
    return mask if mask.any() else None


def add_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float, mask: np.ndarray | None = None) -> np.ndarray:
    """x + noise scaled so that power(x[mask]) / power(noise) = 10^(snr_db/10)."""
    signal_power = np.mean(x[mask] ** 2) if mask is not None else np.mean(x**2)
    noise_power = np.mean(noise**2)
    if signal_power <= 0 or noise_power <= 0:
        return x
    return x + noise * math.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))


def room_impulse_response(rt60_s: float, sample_rate: int, rng: np.random.Generator,
                          drr_db: float = 0.0) -> np.ndarray:
    """A synthetic RIR: 1 at t = 0, then Gaussian noise under exp(-6.908 t / rt60) (60 dB in
    rt60 seconds of energy decay), 1.5 × rt60 long, the tail's energy 10^(-drr_db / 10) of the
    direct path's."""
    n = max(2, int(1.5 * rt60_s * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60_s)  # amplitude: energy decays 60 dB in rt60
    tail[0] = 0.0
    tail *= 10 ** (-drr_db / 20) / (math.sqrt(np.sum(tail**2)) + 1e-12)
    rir = tail
    rir[0] = 1.0
    return rir


def shoebox_drr_db(rt60_s: float, rng: np.random.Generator) -> float:
    """A direct-to-reverberant ratio as a shoebox room of this RT60 gives it: a room of
    3-10 × 3-8 × 2.5-4 m, source and microphone anywhere at least 0.5 m from the walls, and
    DRR = 20 log10(r_c / r) with the critical distance r_c = 0.057 √(V / RT60) (diffuse-field
    theory). Long rooms and far microphones give the negative ratios a fixed 0 dB never has."""
    dims = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.5, 4)])
    distance = float(np.linalg.norm(rng.uniform(0.5, dims - 0.5) - rng.uniform(0.5, dims - 0.5)))
    critical = 0.057 * math.sqrt(float(np.prod(dims)) / rt60_s)
    return 20 * math.log10(critical / max(distance, 0.1))


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """x convolved with `rir`, cut to len(x) (the direct path is at t = 0: nothing moves),
    rescaled to x's power so the SNR that follows means what it says."""
    from scipy.signal import fftconvolve

    y = fftconvolve(x, rir)[: len(x)]
    px, py = np.mean(x**2), np.mean(y**2)
    return y * math.sqrt(px / py) if py > 0 else y


def vtlp_source_hz(freqs_hz: np.ndarray, warp: float, sample_rate: int, knee: float = 0.6) -> np.ndarray:
    """For output frequencies (F,), the input frequencies the VTLP map f → α f sends there.

    The map (Jaitly & Hinton 2013) is α f below knee_hz · min(α, 1) / α and then a straight
    line to Nyquist, so 0 and Nyquist stay fixed and nothing folds over; knee_hz is `knee` ×
    Nyquist (their 4.8 kHz at 16 kHz).
    """
    nyquist = sample_rate / 2
    knee_hz = knee * nyquist
    boundary = knee_hz * min(warp, 1.0) / warp
    grid = np.linspace(0.0, nyquist, 1025)
    upper = nyquist - (nyquist - knee_hz * min(warp, 1.0)) / (nyquist - boundary) * (nyquist - grid)
    warped = np.where(grid <= boundary, warp * grid, upper)
    return np.interp(freqs_hz, warped, grid)  # the map is increasing: invert by interpolation


def formant_shift(x: np.ndarray, warp: float, sample_rate: int, n_fft: int = 512, hop: int = 128,
                  max_gain_db: float = 30.0) -> np.ndarray:
    """x (S,) → (S,) with the spectral envelope warped by `warp` (formants move to α f), the
    fine structure (pitch) and the time axis kept, rescaled to x's power.

    The envelope is the real cepstrum liftered below 2 ms; the per-bin gain is clamped to
    ±`max_gain_db` so near-empty frames (digital silence) cannot blow up.
    """
    if len(x) < n_fft or warp == 1.0:
        return x
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(torch.from_numpy(x), n_fft, hop, window=window, return_complex=True).numpy()  # (F, T)
    log_mag = np.log(np.abs(spec) + 1e-8)
    cepstrum = np.fft.irfft(log_mag, n=n_fft, axis=0)
    cutoff = max(1, int(0.002 * sample_rate))  # 2 ms: below the shortest pitch period (500 Hz)
    cepstrum[cutoff: n_fft - cutoff + 1] = 0.0
    envelope = np.fft.rfft(cepstrum, axis=0).real  # (F, T) smoothed log magnitude
    freqs = np.arange(spec.shape[0]) * sample_rate / n_fft
    source_bins = vtlp_source_hz(freqs, warp, sample_rate) * n_fft / sample_rate
    low = np.clip(np.floor(source_bins).astype(int), 0, len(freqs) - 1)
    high = np.minimum(low + 1, len(freqs) - 1)
    frac = (source_bins - low)[:, None]
    warped = envelope[low] * (1 - frac) + envelope[high] * frac
    limit = max_gain_db / 20 * math.log(10)
    gain = np.exp(np.clip(warped - envelope, -limit, limit))
    y = torch.istft(torch.from_numpy(spec * gain), n_fft, hop, window=window, length=len(x)).numpy()
    px, py = np.mean(x**2), np.mean(y**2)
    return y * math.sqrt(px / py) if py > 0 else y
