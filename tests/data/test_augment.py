"""Loader augmentation: labels stay aligned (a new voice drops only the speaker), the SNR, RT60 and
formant shift are what was asked, every draw is a pure function of (seed, index), babble comes
from the same split only."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mtspeech.data.augment import (AugmentConfig, Augmenter, add_at_snr, colored_noise, for_epoch, formant_shift,
                                   room_impulse_response, shoebox_drr_db, speech_mask, vtlp_source_hz)
from mtspeech.data.dataset import UtteranceDataset
from mtspeech.data.manifest import read_manifest

RATE = 16000


def _tone_with_pause(seconds=2.0):
    """A 300 Hz tone in [0.5, 1.0) s and [1.4, 1.8) s, silence elsewhere; its segments."""
    t = np.arange(int(seconds * RATE)) / RATE
    speech = [[0.5, 1.0], [1.4, 1.8]]
    x = np.zeros_like(t)
    for s, e in speech:
        on = (t >= s) & (t < e)
        x[on] = 0.3 * np.sin(2 * np.pi * 300 * t[on])
    return torch.from_numpy(x.astype(np.float32)), speech


def _pool(n=6, seconds=1.0, seed=0):
    g = np.random.default_rng(seed)
    return [torch.from_numpy((0.1 * g.standard_normal(int(seconds * RATE))).astype(np.float32)) for _ in range(n)]


def test_same_seed_and_index_give_the_same_audio_and_others_differ():
    pool = _pool()
    aug = Augmenter(AugmentConfig(prob=1.0, reverb_prob=0.5), len(pool), pool.__getitem__, RATE)
    wav, speech = _tone_with_pause()
    a = aug(wav, seed=7, index=3, speech=speech)
    again = Augmenter(AugmentConfig(prob=1.0, reverb_prob=0.5), len(pool), pool.__getitem__, RATE)
    assert torch.equal(a, again(wav, seed=7, index=3, speech=speech))  # a fresh object: as after a resume
    assert not torch.equal(a, aug(wav, seed=7, index=4, speech=speech))
    assert not torch.equal(a, aug(wav, seed=8, index=3, speech=speech))
    assert a.shape == wav.shape and a.dtype == torch.float32


def test_speech_stays_in_its_segments_under_noise_and_reverberation():
    """The frames of a segment before and after are the same frames: the envelope of the
    augmented audio lines up with the clean one (best lag 0) and stays loudest inside the segments."""
    wav, speech = _tone_with_pause()
    pool = _pool()
    cfg = AugmentConfig(prob=1.0, noise=("pink",), snr_db=(20.0, 20.0), reverb_prob=1.0, rt60_s=(0.3, 0.3),
                        gain_db=(0.0, 0.0))
    out = Augmenter(cfg, len(pool), pool.__getitem__, RATE)(wav, seed=1, index=0, speech=speech).numpy()
    frame = RATE // 100  # 10 ms
    env = lambda x: np.sqrt((x[: len(x) // frame * frame].reshape(-1, frame) ** 2).mean(1))  # noqa: E731
    clean, noisy = env(wav.numpy()), env(out)
    lags = range(-20, 21)
    corr = [np.corrcoef(np.roll(noisy, lag), clean)[0, 1] for lag in lags]
    assert list(lags)[int(np.argmax(corr))] == 0
    inside = speech_mask(len(clean), [[s * 100, e * 100] for s, e in speech], 1)
    assert noisy[inside].mean() > 3 * noisy[~inside].mean()


@pytest.mark.parametrize("kind", ["white", "pink", "brown"])
def test_noise_is_added_at_the_requested_snr_over_the_speech_frames(kind):
    wav, speech = _tone_with_pause()
    x = wav.numpy().astype(np.float64)
    noise = colored_noise(kind, len(x), np.random.default_rng(0))
    mask = speech_mask(len(x), speech, RATE)
    y = add_at_snr(x, noise, 10.0, mask)
    snr = 10 * math.log10(np.mean(x[mask] ** 2) / np.mean((y - x) ** 2))
    assert snr == pytest.approx(10.0, abs=1e-6)


def test_colored_noise_has_the_slope_it_claims():
    n = colored_noise("pink", 2**16, np.random.default_rng(0))
    power = np.abs(np.fft.rfft(n)) ** 2
    f = np.arange(len(power))
    band = lambda lo, hi: power[(f >= lo) & (f < hi)].mean()  # noqa: E731
    assert 10 * math.log10(band(100, 200) / band(1000, 2000)) == pytest.approx(10.0, abs=1.0)  # 1/f: 10 dB/decade


@pytest.mark.parametrize("rt60", [0.2, 0.5, 0.8])
def test_room_impulse_responses_decay_at_the_requested_rt60(rt60):
    """Schroeder backward integration: the -5 to -35 dB slope, extrapolated to -60 dB."""
    rir = room_impulse_response(rt60, RATE, np.random.default_rng(3))
    edc = np.cumsum((rir[1:] ** 2)[::-1])[::-1]  # reverberant tail only (the direct path is a spike)
    edc_db = 10 * np.log10(edc / edc[0])
    t = np.arange(len(edc_db)) / RATE
    fit = (edc_db <= -5) & (edc_db >= -35)
    slope = np.polyfit(t[fit], edc_db[fit], 1)[0]
    assert -60 / slope == pytest.approx(rt60, rel=0.1)


def test_rooms_get_the_direct_to_reverberant_ratio_asked_for():
    for drr in (-9.0, 0.0, 6.0):
        rir = room_impulse_response(0.5, RATE, np.random.default_rng(4), drr_db=drr)
        assert 10 * math.log10(rir[0] ** 2 / np.sum(rir[1:] ** 2)) == pytest.approx(drr, abs=1e-9)
    # "shoebox" draws it per room, deterministically, with the RT60 (far + reverberant: negative)
    draws = {rt60: [shoebox_drr_db(rt60, np.random.default_rng(k)) for k in range(200)] for rt60 in (0.2, 0.8)}
    assert np.mean(draws[0.8]) < np.mean(draws[0.2]) - 4 and min(draws[0.8]) < -10 < max(draws[0.2])
    shoebox = Augmenter(AugmentConfig(prob=1.0, reverb_prob=1.0, room_drr="shoebox"), 1, lambda i: None, RATE)
    fixed = Augmenter(AugmentConfig(prob=1.0, reverb_prob=1.0), 1, lambda i: None, RATE)
    a, b = shoebox.recipe(seed=1, index=5), fixed.recipe(seed=1, index=5)
    assert a.drr_db != 0.0 and b.drr_db == 0.0 and a == shoebox.recipe(seed=1, index=5)
    assert dataclasses.replace(a, drr_db=0.0) == b  # the other draws do not move
    with pytest.raises(ValueError, match="room_drr"):
        AugmentConfig(room_drr="cathedral")


def test_babble_draws_from_the_same_split_only():
    pool = _pool(8)
    asked = []

    def load(i):
        asked.append(i)
        return pool[i]

    aug = Augmenter(AugmentConfig(prob=1.0, noise=("babble",), reverb_prob=0.0), len(pool), load, RATE)
    wav, speech = _tone_with_pause()
    for index in range(8):
        asked.clear()
        aug(wav, seed=0, index=index, speech=speech)
        assert 3 <= len(asked) <= 6 and index not in asked and all(0 <= i < 8 for i in asked)


def test_dataset_augments_training_only_and_keeps_every_label(prepared_manifests):
    """Through UtteranceDataset: the audio changes, the targets (VAD frames included) do not."""
    from mtspeech.tasks.vad import VADConfig, VADTask

    utts = read_manifest(prepared_manifests["train"])[:6]
    tasks = {"vad": VADTask(VADConfig(), 8, {})}
    cfg = AugmentConfig(prob=1.0)
    plain = UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=5)
    noisy = UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=5, augment=cfg)
    dev = UtteranceDataset(utts, tasks, train=False, speed_factors=None, seed=5, augment=cfg)
    for i in range(len(utts)):
        a, b, c = plain[i], noisy[i], dev[i]
        assert not torch.equal(a.wav, b.wav) and torch.equal(a.wav, c.wav)
        assert a.utt == b.utt  # speaker, text, phones, speech segments: unchanged
    batch_a = plain.collate([plain[i] for i in range(len(utts))])
    batch_b = noisy.collate([noisy[i] for i in range(len(utts))])
    for name in batch_a.targets:
        assert torch.equal(batch_a.targets[name].values, batch_b.targets[name].values)


def _vowel(f0_hz=100.0, formants_hz=(1000.0, 2200.0), seconds=1.0):
    """An impulse train at `f0_hz` through two resonances: a vowel with known pitch and formants."""
    from scipy.signal import lfilter

    x = np.zeros(int(seconds * RATE))
    x[:: int(RATE / f0_hz)] = 1.0
    for f in formants_hz:
        r, theta = math.exp(-math.pi * 100 / RATE), 2 * math.pi * f / RATE
        x = lfilter([1 - r], [1, -2 * r * math.cos(theta), r * r], x)
    return 0.5 * x / np.abs(x).max()


def _strongest_harmonic_hz(x, f0_hz, lo_hz, hi_hz):
    """Frequency of the loudest harmonic of `f0_hz` between lo and hi (the formant, to one harmonic)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    harmonics = np.arange(math.ceil(lo_hz / f0_hz), int(hi_hz / f0_hz) + 1) * f0_hz
    bins = np.round(harmonics * len(x) / RATE).astype(int)
    return float(harmonics[int(np.argmax(spectrum[bins]))])


@pytest.mark.parametrize("warp", [0.85, 1.2])
def test_formant_shift_moves_the_formants_and_keeps_pitch_and_length(warp):
    x = _vowel()
    y = formant_shift(x, warp, RATE)
    assert y.shape == x.shape
    for lo, hi, formant in ((500, 1600, 1000.0), (1700, 3200, 2200.0)):
        assert _strongest_harmonic_hz(x, 100.0, lo, hi) == pytest.approx(formant, abs=100)
        assert _strongest_harmonic_hz(y, 100.0, lo, hi) == pytest.approx(warp * formant, abs=100)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    f = np.fft.rfftfreq(len(y), 1 / RATE)
    on_harmonics = np.abs(f / 100.0 - np.round(f / 100.0)) < 0.1  # within 10 Hz of a multiple of f0
    assert spectrum[on_harmonics].sum() > 0.9 * spectrum.sum()  # the pitch did not move


def test_vtlp_map_fixes_zero_and_nyquist_and_is_linear_below_the_knee():
    f = np.array([0.0, 1000.0, 2000.0, 8000.0])
    for warp in (0.85, 1.15):
        src = vtlp_source_hz(f, warp, RATE)
        assert src[0] == 0.0 and src[-1] == pytest.approx(8000.0)
        assert src[1:3] == pytest.approx(f[1:3] / warp)
        assert np.all(np.diff(vtlp_source_hz(np.linspace(0, 8000, 257), warp, RATE)) > 0)


def test_formant_shift_keeps_speech_in_its_segments():
    """The same frames are speech before and after: the 10 ms envelope lines up at lag 0 and
    what was silence 20 ms away from a segment is still silence."""
    wav, speech = _tone_with_pause()
    cfg = AugmentConfig(prob=0.0, formant_prob=1.0, formant_warp=(1.15, 1.15))
    aug = Augmenter(cfg, 1, lambda i: None, RATE)
    out = aug(wav, seed=0, index=0, speech=speech).numpy()
    assert aug.changes_voice(0, 0) and out.shape == wav.shape
    frame = RATE // 100
    env = lambda x: np.sqrt((x[: len(x) // frame * frame].reshape(-1, frame) ** 2).mean(1))  # noqa: E731
    clean, shifted = env(wav.numpy()), env(out)
    corr = [np.corrcoef(np.roll(shifted, lag), clean)[0, 1] for lag in range(-20, 21)]
    assert int(np.argmax(corr)) - 20 == 0
    padded = [[s - 0.02, e + 0.02] for s, e in speech]
    far = ~speech_mask(len(clean), [[s * 100, e * 100] for s, e in padded], 1)
    assert shifted[far].max() < 1e-3 * shifted[~far].max()


def test_formant_draws_are_seeded_and_leave_the_other_draws_alone():
    pool = _pool()
    base = AugmentConfig(prob=0.7, reverb_prob=0.5)
    voiced = AugmentConfig(prob=0.7, reverb_prob=0.5, formant_prob=0.5)
    plain = Augmenter(base, len(pool), pool.__getitem__, RATE)
    aug = Augmenter(voiced, len(pool), pool.__getitem__, RATE)
    changed = [aug.changes_voice(3, i) for i in range(200)]
    assert 70 < sum(changed) < 130  # about half
    assert changed == [Augmenter(voiced, len(pool), pool.__getitem__, RATE).changes_voice(3, i) for i in range(200)]
    assert not any(plain.changes_voice(3, i) for i in range(200))  # off by default
    for i in range(50):
        a, b = plain.recipe(3, i), aug.recipe(3, i)
        if a is not None:  # noise, room, gain: as they were before formant shifts were turned on
            assert dataclasses.replace(b, formant_warp=None) == a
        assert (b is not None and b.formant_warp is not None) == changed[i]
        if changed[i]:
            assert 0.85 <= b.formant_warp <= 1.15


def test_dataset_drops_the_speaker_of_a_new_voice_only_and_resumes_identically(prepared_manifests):
    """Formant-shifted copies lose their speaker label (the task masks them), keep every other
    label, and a fresh dataset with the same seed (a resumed run) loads exactly the same items."""
    from mtspeech.tasks.vad import VADConfig, VADTask

    utts = read_manifest(prepared_manifests["train"])[:8]
    tasks = {"vad": VADTask(VADConfig(), 8, {})}
    cfg = AugmentConfig(prob=0.5, formant_prob=0.5)
    make = lambda: UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=11, augment=cfg)  # noqa: E731
    first, resumed = make(), make()
    plain = UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=11)
    changed = [first.augmenter.changes_voice(11, i) for i in range(len(utts))]
    assert any(changed) and not all(changed)
    for i, u in enumerate(utts):
        a, b = first[i], resumed[i]
        assert torch.equal(a.wav, b.wav) and a.utt == b.utt
        assert a.utt.speaker == (None if changed[i] else u.speaker)
        assert a.utt.speech == u.speech and a.utt.text == u.text and a.wav.shape == plain[i].wav.shape
    kept = UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=11, augment=cfg, perturbed_speaker=True)
    assert [kept[i].utt.speaker for i in range(len(utts))] == [u.speaker for u in utts]
    batch = first.collate([first[i] for i in range(len(utts))])
    reference = plain.collate([plain[i] for i in range(len(utts))])
    assert torch.equal(batch.targets["vad"].values, reference.targets["vad"].values)


def test_speaker_augmentation_labels_each_fixed_warp_as_a_speaker_of_its_own(prepared_manifests, tmp_path):
    """`formant_speakers`: shifted copies take α from the list and the label S~vtlpα, which the
    speaker task's label space holds for every training speaker; the draws stay seeded."""
    from mtspeech.data.augment import augmented_speakers, voice_label
    from mtspeech.experiment import fit_labels, load_experiment
    from mtspeech.tasks.speaker import SpeakerConfig, SpeakerTask

    cfg = AugmentConfig(prob=0.5, formant_prob=0.5, formant_speakers=(0.88, 1.12))
    pool = _pool()
    aug = Augmenter(cfg, len(pool), pool.__getitem__, RATE)
    warps = [aug.recipe(5, i).formant_warp for i in range(200) if aug.changes_voice(5, i)]
    assert set(warps) == {0.88, 1.12}
    # the same items change voice as with a continuous warp range: only α's value differs
    ranged = Augmenter(dataclasses.replace(cfg, formant_speakers=()), len(pool), pool.__getitem__, RATE)
    assert [aug.changes_voice(5, i) for i in range(200)] == [ranged.changes_voice(5, i) for i in range(200)]
    assert augmented_speakers(["b", "a"], cfg) == ["a", "a~vtlp0.88", "a~vtlp1.12", "b", "b~vtlp0.88", "b~vtlp1.12"]
    assert augmented_speakers(["b", "a"], None) == ["a", "b"]
    for bad in ((1.0,), (0.9, 0.9), (2.5,)):
        with pytest.raises(ValueError, match="formant_speakers"):
            AugmentConfig(formant_speakers=bad)

    utts = read_manifest(prepared_manifests["train"])[:12]
    speakers = sorted({u.speaker for u in utts})
    labels = {"speakers": augmented_speakers(speakers, cfg)}
    tasks = {"speaker": SpeakerTask(SpeakerConfig(), 8, labels)}
    data = UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=11, augment=cfg)
    changed = [data.augmenter.changes_voice(11, i) for i in range(len(utts))]
    assert any(changed) and not all(changed)
    got = [data[i].utt.speaker for i in range(len(utts))]
    for i, u in enumerate(utts):
        want = voice_label(u.speaker, data.augmenter.recipe(11, i).formant_warp) if changed[i] else u.speaker
        assert got[i] == want
    targets = data.collate([data[i] for i in range(len(utts))]).targets["speaker"]
    assert targets.present.all()  # every copy is a known speaker: none is masked any more
    assert [labels["speakers"][k] for k in targets.values.tolist()] == got

    exp = load_experiment("recipes/synthetic/conformer.yaml", [
        f"exp_dir={tmp_path}", "data.augment.formant_prob=0.3", "data.augment.formant_speakers=[0.88, 1.12]"])
    fitted = fit_labels(exp, utts)["speaker"]
    assert fitted["speakers"] == labels["speakers"]
    assert fitted["voices"] == [s for s in labels["speakers"] if "~vtlp" in s]
    # the made-up voices are trained on but never named: identify answers a real speaker
    task = SpeakerTask(SpeakerConfig(), 8, fitted)
    logits = torch.zeros(2, len(fitted["speakers"]))
    logits[0, fitted["speakers"].index(fitted["voices"][0])] = 1.0  # a made-up voice scores best
    logits[0, fitted["speakers"].index(speakers[-1])] = 0.5
    logits[1, fitted["speakers"].index(speakers[0])] = 1.0
    assert task.identify(logits).tolist() == [fitted["speakers"].index(speakers[-1]),
                                              fitted["speakers"].index(speakers[0])]


def test_padding_shifts_the_vad_labels_with_the_audio_and_the_noise_covers_it(prepared_manifests):
    """Silence padded at both ends moves the speech segments by the front pad: the padded item's
    VAD frames are the plain ones with non-speech frames before and after; the audio in between
    is the plain audio; noise fills the pad; a fresh dataset (a resume) pads identically."""
    from mtspeech.tasks.vad import VADConfig, VADTask

    utts = read_manifest(prepared_manifests["train"])[:6]
    tasks = {"vad": VADTask(VADConfig(), 8, {})}
    front_s, back_s = 0.4, 0.8  # whole encoder frames (40 ms), so the label rows shift exactly
    quiet = AugmentConfig(prob=0.0, pad_prob=1.0, pad_s=(front_s, front_s))
    plain = UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=3)
    padded = UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=3, augment=quiet)
    front = round(front_s * RATE)
    for i, u in enumerate(utts):
        a, b = plain[i], padded[i]
        assert b.wav.numel() == a.wav.numel() + 2 * front
        assert torch.equal(b.wav[front: front + a.wav.numel()], a.wav) and not b.wav[:front].any()
        assert b.utt.speech == [[s + front_s, e + front_s] for s, e in u.speech]
        assert b.utt.text == u.text and b.utt.speaker == u.speaker
        la = tasks["vad"].collate([a.utt]).values[0]
        lb = tasks["vad"].collate([b.utt]).values[0]
        k = round(front_s / 0.04)
        assert torch.equal(lb[k: k + len(la)], la) and not lb[:k].any() and not lb[k + len(la):].any()
    noisy_cfg = AugmentConfig(prob=1.0, noise=("white",), reverb_prob=0.0, pad_prob=0.5, pad_s=(front_s, back_s))
    make = lambda: UtteranceDataset(utts, tasks, train=True, speed_factors=None, seed=3, augment=noisy_cfg)  # noqa: E731
    first, resumed = make(), make()
    pads = [first.augmenter.padding(3, i) for i in range(len(utts))]
    assert any(p != (0, 0) for p in pads) and any(p == (0, 0) for p in pads)
    for i, (f, _) in enumerate(pads):
        x, y = first[i], resumed[i]
        assert torch.equal(x.wav, y.wav) and x.utt == y.utt
        if f:
            assert front <= f <= round(back_s * RATE) and x.wav[:f].abs().mean() > 0  # noise in the pad


def test_padding_off_leaves_every_other_draw_alone():
    pool = _pool()
    wav, speech = _tone_with_pause()
    base = Augmenter(AugmentConfig(prob=1.0), len(pool), pool.__getitem__, RATE)
    with_pad = Augmenter(AugmentConfig(prob=1.0, pad_prob=0.5), len(pool), pool.__getitem__, RATE)
    assert base.recipe(4, 2) == with_pad.recipe(4, 2) and base.padding(4, 2) == (0, 0)
    with pytest.raises(ValueError, match="pad_s"):
        AugmentConfig(pad_s=(-1.0, 1.0))
    with pytest.raises(ValueError, match="pad_prob"):
        AugmentConfig(pad_prob=1.5)


def test_rooms_start_at_their_own_epoch_and_the_noise_stays_the_same():
    pool = _pool()
    config = AugmentConfig(prob=1.0, reverb_prob=0.5, start_epoch=2, room_start_epoch=4)
    assert for_epoch(config, 1) is None  # clean epochs
    early, late = for_epoch(config, 2), for_epoch(config, 4)
    assert early.reverb_prob == 0.0 and late is config and for_epoch(config, 9) is config
    rooms, no_rooms = (Augmenter(c, len(pool), pool.__getitem__, RATE) for c in (late, early))
    recipes = [(rooms.recipe(3, i), no_rooms.recipe(3, i)) for i in range(40)]
    assert any(r.rt60_s for r, _ in recipes) and not any(n.rt60_s for _, n in recipes)
    # the room draw is made either way: each utterance keeps its noise, SNR and babble
    assert all((r.noise, r.snr_db, r.babble) == (n.noise, n.snr_db, n.babble) for r, n in recipes)
    assert for_epoch(None, 5) is None
    with pytest.raises(ValueError, match="room_start_epoch"):
        AugmentConfig(room_start_epoch=-1)


def test_stop_epoch_ends_the_augmentation_and_must_follow_the_start():
    config = AugmentConfig(start_epoch=2, stop_epoch=5)
    assert [for_epoch(config, e) is config for e in range(7)] == [False, False, True, True, True, False, False]
    assert for_epoch(AugmentConfig(start_epoch=2), 99) is not None  # 0: augmented to the end
    with pytest.raises(ValueError, match="stop_epoch"):
        AugmentConfig(start_epoch=3, stop_epoch=3)
