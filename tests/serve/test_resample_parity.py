"""One resampler: a file at another rate gives the same features offline and served.

Offline is what `mtspeech evaluate` (and training, and `transcribe`) do: `load_audio` resamples
the whole file with `mtspeech.data.resample.resample`, then `model.features` runs on it. Served
is what the server does with the same file sent as pcm_s16le frames: `protocol.decode_frame`,
then `recognizer.accept` per frame (the stream's `StreamResampler`), `step` / `finish` (the
batcher's calls), which featurize each window's missing samples piece by piece.

Tolerance: the resampled samples must be bit-identical (soxr's stream output equals its
one-shot output at the same quality, measured equal at every rate and frame size here). The
features are compared at atol 1e-5 (a few float32 ulps of log-mels of magnitude ~10): the
filterbank runs on pieces of different lengths, whose matrix products a BLAS may block
differently; measured, they are equal to the last bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from mtspeech.data.audio import load_audio
from mtspeech.data.resample import StreamResampler
from mtspeech.serve.protocol import decode_frame
from tiny_asr import signal, tiny_recognizer

torch.set_num_threads(1)


def _served(rec, path, rate: int, frame_ms: int) -> tuple[np.ndarray, torch.Tensor]:
    """(the stream's resampled samples, the feature frames its encoder read, in order)."""
    pcm = sf.read(path, dtype="int16")[0].astype("<i2").tobytes()
    frame_bytes = 2 * (rate * frame_ms // 1000)
    frames = [decode_frame(pcm[i : i + frame_bytes], "pcm_s16le") for i in range(0, len(pcm), frame_bytes)]

    resampler = StreamResampler(rate, rec.geometry.sample_rate)  # what the stream's buffer runs
    samples = np.concatenate([resampler.push(f) for f in frames] + [resampler.flush()])

    windows, step = [], rec.encoder_step

    def recording_step(feats, cache, roles, chunk_lens=None):
        windows.append(feats[0].clone())
        return step(feats, cache, roles, chunk_lens)

    rec.encoder_step = recording_step
    try:
        s = rec.new_stream(rate, endpointing=False)
        for f in frames:
            rec.accept(s, f)
            while rec.ready(s):
                rec.step([s])
        rec.finish(s)
    finally:
        rec.encoder_step = step
    assert s.samples_accepted == len(samples)
    # Window k reads frames [stride k, stride k + window): its first `stride` frames are new;
    # the last window's frames are all the rest the encoder read.
    feats = torch.cat([w[: rec.stride_frames] for w in windows[:-1]] + [windows[-1]])
    return samples, feats


@pytest.mark.parametrize("rate,seconds,frame_ms", [(8000, 3.3, 100), (8000, 2.0, 37), (44100, 1.7, 20)])
def test_a_file_at_another_rate_gives_the_same_features_offline_and_served(tmp_path, rate, seconds, frame_ms):
    rec = tiny_recognizer()
    model, g = rec.model, rec.geometry
    path = tmp_path / f"speech_{rate}.flac"
    sf.write(path, signal(seconds, seed=1, rate=rate, pcm16=True), rate, subtype="PCM_16")

    offline_wav = load_audio(path, g.sample_rate)  # as evaluate reads it
    with torch.inference_mode():
        offline, lens = model.features(offline_wav[None], torch.tensor([len(offline_wav)]))
    assert int(lens[0]) == g.feature_frames(len(offline_wav)) == offline.shape[1]

    samples, served = _served(rec, path, rate, frame_ms)
    assert len(samples) == len(offline_wav) == round(len(sf.read(path)[0]) * g.sample_rate / rate)
    assert np.array_equal(samples, offline_wav.numpy())  # one filter, bit for bit
    # The encoder reads every frame but a last rest too short for one output (< 7 frames).
    assert offline.shape[1] - g.right_context - 1 < served.shape[0] <= offline.shape[1]
    torch.testing.assert_close(served, offline[0, : served.shape[0]], atol=1e-5, rtol=0)
