"""Export the streaming step (encoder chunk + heads, caches in and out) to one ONNX graph.

    info = export_onnx(model, "exp/onnx", chunk_frames=8, left_chunks=16, checkpoint="final.pt")
    # exp/onnx/encoder_step.onnx (+ .onnx.data: the weights), exp/onnx/export.json (ExportInfo)

The graph is `mtspeech.streaming.step_graph.StreamingStepGraph`: the model's own
`encoder.forward_chunk`, so whatever lives inside `model.encoder` is exported with it. The
batch (streams) is dynamic; the chunk size and left context are fixed by the cache shapes, and
`export.json` records them with the heads, the exporter that worked and the checkpoint's hash,
so a runtime can refuse a graph that does not fit the model or the streaming config.

The dynamo exporter (`torch.onnx.export(..., dynamo=True)`, onnxscript) is tried first; if it
fails the TorchScript exporter (`dynamo=False`) is used, and `ExportInfo.exporter` says which.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mtspeech.streaming.step_graph import INPUT_NAMES, StreamingStepGraph, output_names

log = logging.getLogger(__name__)

GRAPH_FILE = "encoder_step.onnx"
INT8_FILE = "encoder_step.int8.onnx"
INFO_FILE = "export.json"
OPSET = 18
# axis of the batch (streams) in each input; the other axes are fixed by the model and config
BATCH_AXIS = {"feats": 0, "chunk_lens": 0, "keys": 1, "values": 1, "key_valid": 0, "conv": 1, "frames_seen": 0}


@dataclass(frozen=True)
class ExportInfo:
    """What `export.json` holds. `int8`: file name of the quantized copy, or None."""

    chunk_frames: int
    left_chunks: int
    roles: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    torch_version: str
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    graph: str = GRAPH_FILE
    int8: str | None = None

    def save(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / INFO_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, out_dir: str | Path) -> "ExportInfo":
        """Read `out_dir/export.json`; ValueError naming the file when it is missing or foreign."""
        path = Path(out_dir) / INFO_FILE
        if not path.is_file():
            raise ValueError(f"{path} does not exist: {out_dir} is not an ONNX export; "
                             "make one with `mtspeech export onnx --model CKPT --out DIR`")
        raw = json.loads(path.read_text())
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(raw) - fields or not {"chunk_frames", "left_chunks", "roles"} <= set(raw):
            raise ValueError(f"{path}: unexpected keys {sorted(set(raw) - fields)} or missing ones; "
                             "re-export with this version of mtspeech")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (how an export names the checkpoint it came from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def example_inputs(model: nn.Module, chunk_frames: int, left_chunks: int, batch: int = 2) -> tuple:
    """Inputs of the graph for `batch` fresh streams (the tracing example; rows of batch 2 so
    the exporter does not specialise the batch to 1)."""
    window, _ = model.geometry.chunk_window(chunk_frames)
    cache = model.encoder.init_cache(batch, chunk_frames, left_chunks, "cpu")
    feats = torch.zeros(batch, window, model.encoder.cfg.input_dim)
    chunk_lens = torch.full((batch,), window, dtype=torch.long)
    return (feats, chunk_lens, cache.keys, cache.values, cache.key_valid, cache.conv, cache.frames_seen)


def export_onnx(model: nn.Module, out_dir: str | Path, chunk_frames: int, left_chunks: int,
                checkpoint: str | Path | None = None, opset: int = OPSET) -> ExportInfo:
    """Write `out_dir/encoder_step.onnx` and `out_dir/export.json`; returns the ExportInfo.

    `model`: a `MultiTaskModel` (any device; exported on the CPU in eval mode). `checkpoint`:
    the file it was loaded from, recorded with its SHA-256.
    """
    if chunk_frames < 1 or left_chunks < 1:
        raise ValueError(f"chunk_frames={chunk_frames}, left_chunks={left_chunks}: both must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if next(model.parameters()).device.type != "cpu":  # exported on the CPU; the caller keeps its model
        model = copy.deepcopy(model).to("cpu")
    model = model.eval()
    graph = StreamingStepGraph(model, chunk_frames).eval()
    args = example_inputs(model, chunk_frames, left_chunks)
    outputs = output_names(graph.roles)
    path = out_dir / GRAPH_FILE
    exporter = _export(graph, args, path, outputs, opset)
    info = ExportInfo(
        chunk_frames=chunk_frames, left_chunks=left_chunks, roles=graph.roles, inputs=INPUT_NAMES,
        outputs=outputs, exporter=exporter, opset=opset, torch_version=torch.__version__,
        checkpoint=None if checkpoint is None else str(checkpoint),
        checkpoint_sha256=None if checkpoint is None else file_sha256(checkpoint),
    )
    info.save(out_dir)
    log.info("exported %s (%s exporter; heads %s; chunk %d frames, %d left chunks)",
             path, exporter, ", ".join(graph.roles), chunk_frames, left_chunks)
    return info


def _export(graph: nn.Module, args: tuple, path: Path, outputs: tuple[str, ...], opset: int) -> str:
    """Export with the dynamo exporter, else TorchScript's; the name of the one that worked."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        try:
            torch.onnx.export(graph, args, path, input_names=list(INPUT_NAMES), output_names=list(outputs),
                              dynamic_shapes={n: {a: batch} for n, a in BATCH_AXIS.items()},
                              opset_version=opset, dynamo=True, verbose=False)
            return "dynamo"
        except Exception as e:  # the exporter's failures have no common type
            log.warning("dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        axes = {n: {a: "batch"} for n, a in BATCH_AXIS.items()}
        axes |= {n: {0: "batch"} for n in outputs if not n.startswith("new_")}
        axes |= {f"new_{n}": {a: "batch"} for n, a in BATCH_AXIS.items() if n not in ("feats", "chunk_lens")}
        torch.onnx.export(graph, args, path, input_names=list(INPUT_NAMES), output_names=list(outputs),
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
        return "torchscript"
