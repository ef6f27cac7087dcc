"""An int8 copy of an exported graph: onnxruntime's dynamic quantization.

Weights of MatMul / Conv become int8 (per tensor); activations are quantized on the fly, per
call, so no calibration data is needed. Whether the copy is good enough is a measurement, not
an assumption: `mtspeech.export.parity` compares its transcripts with the fp32 graph's.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mtspeech.export.onnx import INT8_FILE, ExportInfo

log = logging.getLogger(__name__)


def quantize_int8(export_dir: str | Path) -> ExportInfo:
    """Write `export_dir/encoder_step.int8.onnx` from the fp32 graph and record it in
    `export.json`; returns the updated ExportInfo."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    export_dir = Path(export_dir)
    info = ExportInfo.load(export_dir)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs a line per tensor on the root logger
    try:
        quantize_dynamic(export_dir / info.graph, export_dir / INT8_FILE, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    info = dataclasses.replace(info, int8=INT8_FILE)
    info.save(export_dir)
    log.info("wrote %s (dynamic int8 quantization)", export_dir / INT8_FILE)
    return info
