"""ONNX export of the streaming step: chunk-by-chunk parity with PyTorch, the int8 gate, the
recognizer on the onnx backend, and clear errors on bad input. One export per session
(`conftest.tiny_export`), a tiny random model (ASR + VAD heads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtspeech.streaming.endpoint import EndpointConfig
from mtspeech.export.onnx import ExportInfo, export_onnx
from mtspeech.export.parity import logit_parity, transcript_parity
from mtspeech.export.runtime import OnnxEncoderStep
from mtspeech.streaming import StreamingConfig, StreamingRecognizer
from mtspeech.streaming.encoder import TorchEncoderStep
from tiny_asr import CHUNK, LEFT, PieceTable, batched_finals, signal

# int8 gate on the tiny model: CER of the int8 transcripts taking the fp32 ones as reference.
# A random model's logits are nearly tied, so int8 rounding flips some tokens (0.11 measured on
# these signals); a broken quantization is near 1. The demo model's gate (int8 CER within
# 0.5 points of fp32 on `test`) is measured by benchmarks/onnx_parity.py.
INT8_MAX_CER_VS_FP32 = 0.25
RECORDINGS = [signal(3.0, seed=s) for s in (0, 1, 2)]


def features(model, wav: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        feats, _ = model.features(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
    return feats[0]


def recognizer(model, step=None) -> StreamingRecognizer:
    cfg = StreamingConfig(chunk_frames=CHUNK, left_chunks=LEFT, endpoint=EndpointConfig(mode="blank"))
    return StreamingRecognizer(model, PieceTable(), cfg, encoder_step=step)


def test_export_records_heads_and_exporter(tiny_export):
    _model, out = tiny_export
    info = ExportInfo.load(out)
    assert info.roles == ("asr", "vad") and info.exporter in ("dynamo", "torchscript")
    assert (info.chunk_frames, info.left_chunks, info.int8) == (CHUNK, LEFT, "encoder_step.int8.onnx")


def test_fp32_logits_match_torch_chunk_by_chunk(tiny_export):
    model, out = tiny_export
    feats = [features(model, w) for w in RECORDINGS]  # 3 s each: 18 chunks, the last one short
    diff = logit_parity(TorchEncoderStep(model, CHUNK, LEFT), OnnxEncoderStep(out), feats)
    assert set(diff) == {"asr", "vad"}
    assert max(diff.values()) < 1e-4, diff


def test_onnx_recognizer_gives_torch_transcripts(tiny_export):
    model, out = tiny_export
    torch_rec, onnx_rec = recognizer(model), recognizer(model, OnnxEncoderStep(out))
    single = transcript_parity(torch_rec, onnx_rec, RECORDINGS)
    assert all(single.texts_a) and single.texts_b == single.texts_a

    # Batched: three streams stepped together (the onnx graph's dynamic batch), same finals.
    assert batched_finals(onnx_rec, RECORDINGS) == single.texts_a


def test_int8_transcripts_stay_within_the_gate(tiny_export):
    model, out = tiny_export
    fp32, int8 = recognizer(model, OnnxEncoderStep(out)), recognizer(model, OnnxEncoderStep(out, int8=True))
    result = transcript_parity(fp32, int8, RECORDINGS)
    assert all(result.texts_b)
    assert result.cer_b_vs_a <= INT8_MAX_CER_VS_FP32, result


def test_bad_input_gives_clear_errors(tiny_export, tmp_path):
    model, out = tiny_export
    with pytest.raises(ValueError, match="mtspeech export onnx"):
        OnnxEncoderStep(tmp_path / "nowhere")
    # a streaming config the graph was not exported for
    with pytest.raises(ValueError, match="chunk_frames=4, left_chunks=3"):
        StreamingRecognizer(model, PieceTable(), StreamingConfig(chunk_frames=CHUNK + 1, left_chunks=LEFT),
                            encoder_step=OnnxEncoderStep(out))
    # an export made from another checkpoint file
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the checkpoint this export came from")
    info = ExportInfo.load(out)
    import dataclasses

    fake = tmp_path / "fake_export"
    fake.mkdir()
    for f in out.iterdir():
        (fake / f.name).symlink_to(f)
    (fake / "export.json").unlink()
    dataclasses.replace(info, checkpoint="a.pt", checkpoint_sha256="0" * 64).save(fake)
    with pytest.raises(ValueError, match="export this checkpoint again"):
        OnnxEncoderStep(fake, checkpoint=other)
    # a model without an ASR task has nothing to export
    model_without_asr = torch.nn.Module()
    model_without_asr.encoder, model_without_asr.tasks = model.encoder, torch.nn.ModuleDict({"vad": model.tasks["vad"]})
    with pytest.raises(ValueError, match="no ASR task"):
        export_onnx(model_without_asr, tmp_path / "x", CHUNK, LEFT)


def test_export_command_rejects_a_missing_checkpoint(tmp_path, caplog):
    from mtspeech.cli import main

    assert main(["export", "onnx", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.pt does not exist" in caplog.text


def test_serve_time_export_leaves_no_folder_behind(tiny_export, monkeypatch, tmp_path):
    """`serve --backend onnx` without --onnx-dir exports into a temporary folder, removed once
    the session holds the graph; the step still runs."""
    import tempfile

    from mtspeech.export.runtime import onnx_step_for

    model, _ = tiny_export
    checkpoint = tmp_path / "model.pt"  # only hashed, to name the export's source
    checkpoint.write_bytes(b"weights")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    step = onnx_step_for(model, checkpoint, CHUNK, LEFT, export_dir=None)
    assert list(scratch.iterdir()) == []
    feats = [features(model, RECORDINGS[0])]
    diff = logit_parity(TorchEncoderStep(model, CHUNK, LEFT), step, feats)
    assert max(diff.values()) < 1e-4, diff
