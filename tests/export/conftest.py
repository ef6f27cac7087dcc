"""Export fixture: the tiny streaming model of `tests/tiny_asr.py`, exported once (fp32 + int8)."""

from __future__ import annotations

import pytest
import torch

from mtspeech.export.onnx import export_onnx
from mtspeech.export.quantize import quantize_int8
from tiny_asr import CHUNK, LEFT, tiny_model


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(model, folder holding its export: fp32 and int8, chunk CHUNK with LEFT left chunks)."""
    torch.set_num_threads(1)  # tiny models on shared cores: one thread is fastest
    model = tiny_model(seed=0)
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(model, out, CHUNK, LEFT)
    quantize_int8(out)
    return model, out
