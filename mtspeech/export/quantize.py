"""An int8 copy of an exported graph: onnxruntime's dynamic quantization.

Weights of MatMul / Conv become 8-bit (uint8, per tensor); activations are quantized on the
fly, per call, so no calibration data is needed. Whether the copy is good enough is a measurement, not
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
        # uint8 weights (U8U8), not int8: on x86 CPUs without VNNI (AVX2 only: many AMD EPYC
        # and older Xeons) onnxruntime's u8 x s8 kernel adds pairs of products in saturating
        # int16 (VPMADDUBSW), and the transcripts turn to noise. On the tiny model's test, int8
        # CER against fp32 was 0.94 with s8 weights, 0.55 with reduce_range, 0.12 with u8
        # weights on an AVX2 EPYC (0.11 with s8 weights where the gate was first set). U8U8
        # cannot saturate there.
        quantize_dynamic(export_dir / info.graph, export_dir / INT8_FILE, weight_type=QuantType.QUInt8)
    finally:
        root.setLevel(level)
    info = dataclasses.replace(info, int8=INT8_FILE)
    info.save(export_dir)
    log.info("wrote %s (dynamic int8 quantization)", export_dir / INT8_FILE)
    return info
