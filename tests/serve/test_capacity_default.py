"""`serve`'s default --max-streams is the committed load benchmark's capacity, per core."""

import argparse
import json
import os
from pathlib import Path

from mtspeech.serve import app as serve_app
from mtspeech.serve.limits import STREAMS_PER_CORE
from mtspeech.streaming import StreamingConfig

RESULT = Path(__file__).resolve().parents[2] / "docs/results/server-load/default-continuous-2cores.json"


def test_streams_per_core_is_what_the_committed_benchmark_measured():
    result = json.loads(RESULT.read_text())
    settings = result["settings"]
    # the default server: phones + LM (auto), worker processes and decoding steps at their defaults
    assert settings["decoder"] == "auto" and settings["workers"] is None and settings["decode_threads"] is None
    assert settings["left_chunks"] == StreamingConfig.left_chunks and settings["chunk_frames"] == StreamingConfig.chunk_frames
    assert result["max_streams_keeping_up"] == STREAMS_PER_CORE * settings["cpu_count"]


def test_serve_without_max_streams_caps_at_streams_per_core_times_cores(tmp_path):
    parser = argparse.ArgumentParser()
    serve_app.add_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path / "missing.pt")])
    assert args.max_streams is None
    assert serve_app.main(args) == 2  # no checkpoint: refused, after the defaults were resolved
    assert args.max_streams == STREAMS_PER_CORE * (os.cpu_count() or 1)
    args = parser.parse_args(["--model", str(tmp_path / "missing.pt"), "--max-streams", "7"])
    serve_app.main(args)
    assert args.max_streams == 7
