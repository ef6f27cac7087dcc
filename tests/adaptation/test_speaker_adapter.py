"""Speaker-embedding conditioning on the tiny trained model: an untrained adapter is the trained
model exactly, training lowers the loss of utterances it never saw, training resumes and extends
exactly, `adapt --params speaker-embedding` changes only the layer-norms tensors with no gradient
step and writes a delta that rebuilds and serves, and bad input is refused with a reason."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import soundfile
import torch

from mtspeech.adaptation import inputs
from mtspeech.adaptation import train_speaker_adapter as training
from mtspeech.adaptation.command import adapt, delta_path
from mtspeech.adaptation.fine_tune import asr_loss
from mtspeech.adaptation.param_sets import AdaptationError, ParamSet, ParamSetConfig, apply_delta
from mtspeech.adaptation.reptile import ReptileConfig, meta_train
from mtspeech.adaptation.speaker_adapter import (ADAPTER_KEY, SpeakerAdapterConfig, adapter_entry, condition,
                                                 load_adapter, new_adapter)
from mtspeech.checkpoint import load_model, load_state, save_atomic
from mtspeech.data.manifest import read_manifest

SET = ParamSetConfig("speaker-embedding")
TOY = training.AdapterTrainingConfig(steps=30, voices_per_step=2, max_k=4, query=4, lr=3e-3, save_every=10)


def _split(utts):
    """A voice's utterances → (to train the adapter on, two held back to embed, two to score)."""
    return utts[:-4], utts[-4:-2], utts[-2:]


@pytest.fixture(scope="module")
def two_voices(prepared_manifests, tmp_path_factory):
    """Every utterance of the session corpus twice, as two voices: as recorded ("clean"), and
    through the new channel of `new_condition` ("channel": highs boosted, 10 dB down). The
    adapter is centred on the mean training voice, so it has to learn how the two differ."""
    from scipy.signal import lfilter

    folder = tmp_path_factory.mktemp("two_voices")
    clean, channel = [], []
    for split in ("train", "dev", "test", "test-unseen", "test-engine"):
        for u in read_manifest(prepared_manifests[split]):
            wav, rate = soundfile.read(u.audio, dtype="float32")
            path = folder / f"{u.id}.wav"
            soundfile.write(path, (0.3 * lfilter([1.0, -0.9], [1.0], wav)).astype("float32"), rate)
            clean.append(dataclasses.replace(u, speaker="clean"))
            channel.append(dataclasses.replace(u, id=u.id + "-ch", audio=str(path), speaker="channel"))
    return _split(channel), _split(clean)


@pytest.fixture(scope="module")
def voice(two_voices):
    return two_voices[0]


@pytest.fixture(scope="module")
def clean(two_voices):
    return two_voices[1]


@pytest.fixture(scope="module")
def trained(tiny_trained, voice, clean, tmp_path_factory):
    out = tmp_path_factory.mktemp("speaker_adapter") / "adapter.pt"
    return out, training.train_speaker_adapter(tiny_trained, voice[0] + clean[0], out, training=TOY)


def _batches(model, utts):
    wavs = inputs.load_waves(utts, model.geometry.sample_rate)
    return inputs.batches(utts, wavs, model.tasks[model.asr_task], 60.0, model.geometry.sample_rate)


def test_an_untrained_adapter_is_the_trained_model_exactly(tiny_trained, voice, tmp_path):
    state, model = load_state(tiny_trained), load_model(tiny_trained)[0]
    adapter, pset = new_adapter(model, SpeakerAdapterConfig(), seed=3)
    wavs = inputs.load_waves(voice[1], model.geometry.sample_rate)
    values = condition(model, adapter, pset, wavs).values
    assert all(torch.equal(values[k], state["model"][k]) for k in pset.keys)

    untrained = tmp_path / "untrained.pt"
    save_atomic({**state, ADAPTER_KEY: adapter_entry(adapter)}, untrained)
    adapt(untrained, voice[1], SET, tmp_path / "same.pt")
    adapted = load_model(tmp_path / "same.pt")[0]
    (batch,) = _batches(model, voice[2])
    with torch.no_grad():
        layers = zip(model.encode(batch.wav, batch.wav_lens).layers, adapted.encode(batch.wav, batch.wav_lens).layers)
        assert all(torch.equal(a, b) for a, b in layers)


def test_training_lowers_the_loss_of_utterances_it_never_saw(tiny_trained, voice, clean, trained):
    out, entry = trained
    assert entry["steps_done"] == TOY.steps and len(entry["query_losses"]) == TOY.steps
    model = load_model(out)[0]
    adapter, pset = load_adapter(load_state(out), model)
    assert all(not d.any() for d in adapter(adapter.center).values())  # the mean training voice: no change
    assert any(d.any() for d in adapter(adapter.center + adapter.spread).values())
    adapted, base = 0.0, 0.0
    for _, to_embed, to_score in (voice, clean):
        values = condition(model, adapter, pset, inputs.load_waves(to_embed, model.geometry.sample_rate)).values
        held_back = _batches(model, to_score)
        adapted += asr_loss(model, pset, values, held_back)
        base += asr_loss(model, pset, pset.initial(), held_back)
    assert adapted < base
    base, with_adapter = load_state(tiny_trained)["model"], load_state(out)["model"]
    assert all(torch.equal(base[k], with_adapter[k]) for k in base)  # evaluating it evaluates the base


def test_training_resumes_and_extends_exactly(tiny_trained, voice, clean, tmp_path, monkeypatch):
    short = dataclasses.replace(TOY, steps=6, save_every=2)
    utts = voice[0] + clean[0]
    straight = training.train_speaker_adapter(tiny_trained, utts, tmp_path / "straight.pt", training=short)
    calls = {"n": 0}
    real = training.batch_loss

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:  # steps 1-2 saved (two voices, one batch each), killed inside step 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "resumed.pt"
    monkeypatch.setattr(training, "batch_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train_speaker_adapter(tiny_trained, utts, out, training=short)
    assert load_state(out)[ADAPTER_KEY]["steps_done"] == 2
    monkeypatch.setattr(training, "batch_loss", real)
    training.train_speaker_adapter(tiny_trained, utts, out, training=dataclasses.replace(short, steps=4))  # resumed
    resumed = training.train_speaker_adapter(tiny_trained, utts, out, training=short)  # and extended
    for k, v in straight["state"].items():
        assert torch.equal(resumed["state"][k], v), k
    with pytest.raises(AdaptationError, match="not written by a train-speaker-adapter run with these settings"):
        training.train_speaker_adapter(tiny_trained, utts, out, training=dataclasses.replace(short, lr=1e-3))


def test_adapt_changes_only_the_layer_norms_with_no_step_and_the_delta_rebuilds(tiny_trained, voice, trained,
                                                                              tmp_path):
    out = tmp_path / "voice.pt"
    utts = [dataclasses.replace(u, text=None) for u in voice[1]]  # the embedding needs no transcript
    record = adapt(trained[0], utts, SET, out, k=2, seed=1)
    base, adapted = load_state(tiny_trained)["model"], load_state(out)
    declared = set(ParamSet(load_model(tiny_trained)[0], ParamSetConfig("layer-norms")).keys)
    changed = {k for k in base if not torch.equal(base[k], adapted["model"][k])}
    assert changed and changed <= declared, sorted(changed - declared)[:5]
    assert record["steps"] == 0 and record["init"] == "speaker-adapter" and record["seconds"] > 0
    assert record["loss_before"] is None and record["set"] == SET.as_dict() and record["k"] == 2
    assert ADAPTER_KEY not in adapted  # an adapted checkpoint is a plain one
    rebuilt = apply_delta(base, torch.load(delta_path(out), map_location="cpu", weights_only=True))
    assert all(torch.equal(rebuilt[k], adapted["model"][k]) for k in base)
    with_text = adapt(trained[0], voice[1], SET, tmp_path / "texts.pt", k=2, seed=1)  # then the loss is recorded
    assert with_text["loss_before"] is not None and with_text["loss_after"] is not None


def test_the_delta_serves_through_the_adapted_key_path(trained, voice, tmp_path):
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.serve.adapted import load_adapted
    from mtspeech.streaming import StreamingConfig

    out = tmp_path / "voices" / "v.pt"
    adapt(trained[0], voice[1], SET, out)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": {"k3y-voice-1": {"delta": "voices/v.delta.pt"}}}))
    streaming = StreamingConfig(chunk_frames=4, left_chunks=2)
    base = load_recognizer(trained[0], backend="torch-eager", streaming=streaming)
    served = load_adapted(keys, trained[0], base, backend="torch-eager")["k3y-voice-1"].recognizer
    expected = load_state(out)["model"]
    assert all(torch.equal(v, expected[k]) for k, v in served.model.state_dict().items())
    wav = inputs.load_waves(voice[2][:1], 16000)[0]
    offline = load_recognizer(out, backend="torch-eager", streaming=streaming)
    assert [f.text for f in served.transcribe(wav, endpointing=False)] == \
        [f.text for f in offline.transcribe(wav, endpointing=False)]


# ------------------------------------------------------------------------------------ bad input
def test_a_checkpoint_without_an_adapter_is_refused_saying_to_train_one(tiny_trained, voice, tmp_path):
    with pytest.raises(AdaptationError, match="has none: train one first.*train-speaker-adapter"):
        adapt(tiny_trained, voice[1], SET, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_gradient_options_k_rate_and_layers_are_refused(trained, voice, tmp_path):
    with pytest.raises(AdaptationError, match="takes no gradient steps"):
        adapt(trained[0], voice[1], SET, tmp_path / "x.pt", steps=5)
    with pytest.raises(AdaptationError, match="--k 5 is larger than the 2 utterance"):
        adapt(trained[0], voice[1], SET, tmp_path / "x.pt", k=5)
    with pytest.raises(AdaptationError, match="--layers 1: the checkpoint's speaker adapter sets the top all"):
        adapt(trained[0], voice[1], ParamSetConfig("speaker-embedding", layers=1), tmp_path / "x.pt")
    wav, rate = soundfile.read(voice[1][0].audio, dtype="float32")
    low = tmp_path / "low.wav"
    soundfile.write(low, wav[::4], rate // 4)  # 4 kHz
    with pytest.raises(AdaptationError, match=r"low.wav.*4000 Hz is below 8000 Hz"):
        adapt(trained[0], [dataclasses.replace(voice[1][0], audio=str(low))], SET, tmp_path / "x.pt")


def test_training_refuses_too_few_voices_and_meta_train_refuses_the_set(tiny_trained, voice, tmp_path):
    with pytest.raises(AdaptationError, match="--voices-per-step 2 is larger than the 1 voices"):
        training.train_speaker_adapter(tiny_trained, voice[0], tmp_path / "x.pt",
                                       training=dataclasses.replace(TOY, voices_per_step=2))
    with pytest.raises(AdaptationError, match="speaker-embedding takes none"):
        meta_train(tiny_trained, voice[0], SET, tmp_path / "m.pt", ReptileConfig(outer_steps=1, meta_batch=1, k=1))


def test_command_lines_train_and_adapt_from_files_without_transcripts(tiny_trained, voice, new_condition, tmp_path):
    from mtspeech.adaptation import command

    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    adapter = tmp_path / "adapter.pt"
    args = parser.parse_args([str(tiny_trained), "--manifest", str(new_condition), "--out", str(adapter),
                              "--steps", "1", "--voices-per-step", "1", "--max-k", "1", "--query", "1"])
    assert training.main(args) == 0
    files = []
    for u in voice[1]:
        path = tmp_path / f"{u.id}.flac"
        wav, rate = soundfile.read(u.audio, dtype="float32")
        soundfile.write(path, wav, rate)
        files.append(str(path))  # no .txt beside them
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args([str(adapter), *files, "--params", "speaker-embedding", "--out", str(tmp_path / "o.pt")])
    assert command.main(args) == 0
    assert load_state(tmp_path / "o.pt")["adaptation"]["k"] == len(files)
    args = parser.parse_args([str(adapter), *files, "--params", "layer-norms", "--out", str(tmp_path / "g.pt")])
    assert command.main(args) == 2  # a gradient set still needs the words
    silence = tmp_path / "silence.wav"
    soundfile.write(silence, np.zeros(8000, dtype=np.float32), 16000)
    assert inputs.from_files([silence], need_transcripts=False)[0].text is None
