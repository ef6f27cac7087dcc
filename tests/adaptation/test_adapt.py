"""`mtspeech adapt` on a tiny trained model: only the declared tensors change, the loss on held-back
utterances of the same voice falls, the adapted checkpoint loads and streams like any other,
and bad input is refused with a reason."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import soundfile
import torch

from mtspeech.adaptation import inputs
from mtspeech.adaptation.command import add_arguments, adapt, delta_path, main
from mtspeech.adaptation.param_sets import AdaptationError, ParamSet, ParamSetConfig, apply_delta
from mtspeech.checkpoint import load_model, load_state
from mtspeech.data.manifest import read_manifest, write_manifest
from mtspeech.encoders.subsampling import chunk_windows

SETS = {
    "input-norm": ParamSetConfig("input-norm"),
    "layer-norms": ParamSetConfig("layer-norms", layers=1),
    "lora": ParamSetConfig("lora", layers=1, rank=2),
}


def held_back_loss(checkpoint, utts) -> float:
    """The ASR CTC loss of `utts` under the checkpoint's model (eval mode, full context)."""
    model = load_model(checkpoint)[0]
    task = model.tasks[model.asr_task]
    wavs = inputs.load_waves(utts, model.geometry.sample_rate)
    (batch,) = inputs.batches(utts, wavs, task, 1000.0, model.geometry.sample_rate)
    with torch.no_grad():
        losses, _, _ = model(batch.wav, batch.wav_lens, {task.name: batch.targets[task.name]})
    return float(losses[task.name])


@pytest.fixture(scope="module")
def voice(new_condition):
    utts = read_manifest(new_condition)
    return utts[:1], utts[1:]  # k = 1 to adapt on; the rest held back


@pytest.mark.parametrize("kind", sorted(SETS))
def test_k1_changes_only_the_declared_set_and_lowers_held_back_loss(tiny_trained, voice, tmp_path, kind):
    adapt_on, held_back = voice
    out = tmp_path / "adapted.pt"
    lr = 5e-2 if kind == "input-norm" else 1e-2  # CMVN statistics are in log-mel units: larger steps
    record = adapt(tiny_trained, adapt_on, SETS[kind], out, k=1, steps=20, lr=lr, seed=0)

    base, adapted = load_state(tiny_trained)["model"], load_state(out)["model"]
    declared = set(ParamSet(load_model(tiny_trained)[0], SETS[kind]).keys)
    assert base.keys() == adapted.keys()
    changed = {k for k in base if not torch.equal(base[k], adapted[k])}
    assert changed == declared, f"changed outside the set: {sorted(changed - declared)[:5]}"
    assert record["loss_after"] < record["loss_before"]
    assert held_back_loss(out, held_back) < held_back_loss(tiny_trained, held_back)

    assert record["k"] == 1 and record["utterances"] == [adapt_on[0].id] and record["steps"] == 20
    assert record["set"] == SETS[kind].as_dict() and record["init"] == "model"
    delta = load_state_file(delta_path(out))
    assert record["delta_bytes"] == delta_path(out).stat().st_size
    assert record["delta_values"] < sum(v.numel() for v in base.values()) / 10  # small: only the set
    rebuilt = apply_delta(base, delta)
    for key in base:
        torch.testing.assert_close(rebuilt[key], adapted[key], atol=1e-6, rtol=1e-6)


def load_state_file(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@torch.no_grad()
def test_adapted_checkpoint_streams_chunk_by_chunk_as_full_context(tiny_trained, voice, tmp_path):
    out = tmp_path / "lora.pt"
    adapt(tiny_trained, voice[0], SETS["lora"], out, k=1, steps=3, lr=1e-2)
    wav = inputs.load_waves(voice[1][:1], 16000)[0][None]
    for checkpoint in (tiny_trained, out):  # what held for the base model holds for the adapted one
        model = load_model(checkpoint)[0]
        feats, lens = model.features(wav, torch.tensor([wav.shape[1]]))
        enc = model.encoder
        chunk, left = 4, 2
        full = enc(feats, lens, chunk_frames=chunk, left_chunks=left).layers[-1]
        cache = enc.init_cache(1, chunk, left)
        parts = []
        for start, end in chunk_windows(feats.shape[1], chunk):
            step, cache = enc.forward_chunk(feats[:, start:end], cache)
            parts.append(step.layers[-1])
        torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_adapted_checkpoint_evaluates(tiny_trained, voice, new_condition, tmp_path):
    from mtspeech.evaluation.evaluate import evaluate

    out = tmp_path / "ln.pt"
    adapt(tiny_trained, voice[0], SETS["layer-norms"], out, k=1, steps=2)
    held = tmp_path / "held.jsonl"
    write_manifest(held, voice[1])
    results = evaluate(out, held, tmp_path / "eval", device="cpu")
    assert "asr/cer" in results["metrics"]


def test_k_draws_with_the_seed_and_is_recorded(tiny_trained, voice, tmp_path):
    utts = voice[0] + voice[1]
    a = adapt(tiny_trained, utts, SETS["input-norm"], tmp_path / "a.pt", k=3, steps=1, seed=5)
    b = adapt(tiny_trained, utts, SETS["input-norm"], tmp_path / "b.pt", k=3, steps=1, seed=5)
    c = adapt(tiny_trained, utts, SETS["input-norm"], tmp_path / "c.pt", k=3, steps=1, seed=6)
    assert a["utterances"] == b["utterances"] != c["utterances"]
    assert len(set(a["utterances"])) == 3


# ------------------------------------------------------------------------------------ bad input
def test_no_transcripts_is_refused(tiny_trained, voice, tmp_path):
    utts = [dataclasses.replace(u, text=None) for u in voice[0]]
    with pytest.raises(AdaptationError, match="no transcripts"):
        adapt(tiny_trained, utts, SETS["input-norm"], tmp_path / "x.pt")
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(AdaptationError, match="no transcripts.*clip.txt"):
        inputs.from_files([wav])


def test_rate_below_telephone_is_refused_and_others_resampled(tiny_trained, voice, tmp_path):
    wav, rate = soundfile.read(voice[0][0].audio, dtype="float32")
    low = tmp_path / "low.wav"
    soundfile.write(low, wav[::4], rate // 4)  # 4 kHz
    with pytest.raises(AdaptationError, match=r"low.wav.*4000 Hz is below 8000 Hz"):
        adapt(tiny_trained, [dataclasses.replace(voice[0][0], audio=str(low))], SETS["input-norm"], tmp_path / "x.pt")
    odd = tmp_path / "odd.wav"
    soundfile.write(odd, wav, 22050)  # any rate from 8 kHz up is resampled (soxr), not refused
    (odd_wav,) = inputs.load_waves([dataclasses.replace(voice[0][0], audio=str(odd))], 16000)
    assert abs(len(odd_wav) - round(len(wav) * 16000 / 22050)) <= 1


def test_unreadable_audio_is_refused(tiny_trained, voice, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AdaptationError, match="bad.wav.*cannot read audio"):
        adapt(tiny_trained, [dataclasses.replace(voice[0][0], audio=str(bad))], SETS["input-norm"], tmp_path / "x.pt")


def test_k_larger_than_the_files_is_refused(tiny_trained, voice, tmp_path):
    with pytest.raises(AdaptationError, match="--k 5 is larger than the 1 utterance"):
        adapt(tiny_trained, voice[0], SETS["input-norm"], tmp_path / "x.pt", k=5)


def test_unknown_set_is_refused():
    with pytest.raises(AdaptationError, match="unknown parameter set 'everything'.*input-norm"):
        ParamSetConfig("everything")


def test_command_line_refuses_a_mixed_manifest_and_returns_2(tiny_trained, prepared_manifests, tmp_path, caplog):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(tiny_trained), "--manifest", str(prepared_manifests["train"]),
                              "--out", str(tmp_path / "x.pt")])
    assert main(args) == 2
    assert "pick it with --speaker" in caplog.text
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow  # the ONNX export alone takes over ten seconds on two shared cores
def test_adapted_checkpoint_exports_to_onnx_with_logit_parity(tiny_trained, voice, tmp_path):
    from mtspeech.export.onnx import export_onnx
    from mtspeech.export.parity import logit_parity
    from mtspeech.export.runtime import OnnxEncoderStep
    from mtspeech.streaming.encoder import TorchEncoderStep

    out = tmp_path / "lora.pt"
    adapt(tiny_trained, voice[0], SETS["lora"], out, k=1, steps=3, lr=1e-2)
    model = load_model(out)[0]
    export_onnx(model, tmp_path / "onnx", 4, 2)
    with torch.inference_mode():
        wav = inputs.load_waves(voice[1][:1], 16000)[0]
        feats = model.features(wav[None], torch.tensor([len(wav)]))[0][0]
    diff = logit_parity(TorchEncoderStep(model, 4, 2), OnnxEncoderStep(tmp_path / "onnx"), [feats])
    assert diff and max(diff.values()) < 1e-4, diff


def test_command_line_adapts_from_files_with_transcripts_beside_them(tiny_trained, voice, tmp_path):
    files = []
    for u in voice[1][:2]:
        wav, rate = soundfile.read(u.audio, dtype="float32")
        path = tmp_path / f"{u.id}.flac"
        soundfile.write(path, wav, rate)
        path.with_suffix(".txt").write_text(u.text.lower() + "\n")  # normalised as prepare normalises
        files.append(str(path))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(tiny_trained), *files, "--params", "input-norm", "--steps", "2",
                              "--out", str(tmp_path / "out.pt")])
    assert main(args) == 0
    record = load_state(tmp_path / "out.pt")["adaptation"]
    assert record["utterances"] == [u.id for u in voice[1][:2]] and record["k"] == 2
