"""The command line the benchmarks share: the model to measure, and `main()`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """--model CKPT or --random-model (a tiny random checkpoint, `_tiny_model.py`), one required."""
    model = ap.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="checkpoint (from `mtspeech train`)")
    model.add_argument("--random-model", action="store_true",
                       help="a tiny randomly initialised checkpoint (nonsense text; for smoke runs)")


def model_path(args: argparse.Namespace) -> str:
    """The checkpoint to measure: `--model`, or a tiny random one written to a temporary folder."""
    if not args.random_model:
        return args.model
    import tempfile

    from _tiny_model import build_random_checkpoint

    return str(build_random_checkpoint(tempfile.mkdtemp() + "/random.pt"))


def transcribed_audio(manifest: str, limit: int | None, random_model: bool) -> tuple[list, list[str]]:
    """The 16 kHz signals (numpy) and transcripts of the first `limit` utterances of `manifest`
    that have a transcript; for a smoke run of a random model without a manifest, `limit` (2)
    seconds of noise scored against a made-up text. SystemExit when there is nothing to read."""
    import numpy as np

    from mtspeech.data.audio import load_audio
    from mtspeech.data.geometry import SAMPLE_RATE
    from mtspeech.data.manifest import read_manifest

    if Path(manifest).is_file():
        utts = [u for u in read_manifest(manifest) if u.text][:limit]
        audio = [load_audio(u.audio, SAMPLE_RATE).numpy() for u in utts]
        refs = [u.text for u in utts]
    elif random_model:  # smoke run: a noise signal, scored against a made-up text
        rng = np.random.default_rng(0)
        audio = [(0.1 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32) for _ in range(limit or 2)]
        refs = ["A TEST"] * len(audio)
    else:
        raise SystemExit(f"{manifest}: no such manifest")
    if not audio:
        raise SystemExit(f"{manifest}: no utterance with a transcript")
    return audio, refs


def stream_live(rec, samples, decoder: str | None = None, seconds: float = 0.1) -> list:
    """Feed one new endpointing stream of `rec` the 16 kHz `samples` `seconds` at a time, as a live
    client sends audio, stepping whenever a chunk is ready; its events once it is finished."""
    from mtspeech.data.geometry import SAMPLE_RATE

    s = rec.new_stream(SAMPLE_RATE, endpointing=True, interim=False, decoder=decoder)
    feed = int(seconds * SAMPLE_RATE)
    for i in range(0, len(samples), feed):
        rec.accept(s, samples[i: i + feed])
        while rec.ready(s):
            rec.step([s])
    rec.finish(s)
    return rec.events(s)


def wer_delta(reference_errors: list, errors: list) -> dict:
    """The WER difference of `errors` to `reference_errors` (per-utterance (errors, words), paired)
    with its 95 % paired-bootstrap interval over utterances and p-value."""
    from mtspeech.evaluation.stats import paired_bootstrap

    r = paired_bootstrap(reference_errors, errors, n_resamples=2000)
    return {"delta_wer": round(r.delta, 5), "ci": [round(r.ci_low, 5), round(r.ci_high, 5)], "p": r.p_value}


def run_main(doc: str, add_arguments: Callable, run: Callable, render: Callable,
             argv: list[str] | None = None, indent: int | None = 1,
             usage_errors: tuple[type[Exception], ...] = ()) -> dict:
    """Parse `argv`, run, print the rendered result, write it as JSON to `--out` if given
    (`indent` None: on one line, for results with many per-item records). An exception of
    `usage_errors` from `run` is reported as a usage error (argparse's message, exit 2)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        result = run(args)
    except usage_errors as e:
        ap.error(str(e))
    return emit(result, render, args.out, indent)


def emit(result: dict, render: Callable, out: str | None, indent: int | None = 1) -> dict:
    """Print the rendered result and write it as JSON to `out` if given."""
    print(render(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=indent))
        print(f"wrote {out}")
    return result
