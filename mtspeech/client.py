"""`mtspeech transcribe`: transcribe files through a running server, or locally.

Server mode streams each file over the WebSocket protocol (docs/server.md) in 16-bit PCM
frames (paced in real time with `realtime=True`, as a microphone would) and prints partial
and final results as they arrive. Local mode runs the same `StreamingRecognizer` in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

from mtspeech.data.geometry import SAMPLE_RATE  # what the server's models take: no resampling there
from mtspeech.resumable_stream import Reconnect, RetryPolicy, stream_audio, to_pcm16  # noqa: F401 (to_pcm16: API)


@dataclass
class FileResult:
    """What the server (or the local recognizer) returned for one file."""

    path: str
    finals: list[dict] = field(default_factory=list)  # {"text", "start", "end", "words"}
    partials: int = 0
    errors: list[dict] = field(default_factory=list)
    reconnects: list[Reconnect] = field(default_factory=list)  # sessions left for another replica

    @property
    def text(self) -> str:
        return " ".join(f["text"] for f in self.finals if f["text"])


def _load(path: str | Path) -> np.ndarray:
    """A file as float32 mono samples at 16 kHz."""
    from mtspeech.data.audio import load_audio

    wav = load_audio(path, SAMPLE_RATE)
    return np.asarray(wav.numpy() if hasattr(wav, "numpy") else wav, dtype=np.float32)


def _unreadable(path: str | Path, error: Exception) -> FileResult:
    """A file that could not be read: an error result (printed to stderr); the others go on."""
    print(f"{path}: error: {error}", file=sys.stderr)
    return FileResult(str(path), errors=[{"type": "error", "code": "unreadable_audio", "message": str(error)}])


async def stream_samples(url: str, samples: np.ndarray, realtime: bool = False, frame_ms: int = 100,
                         api_key: str | None = None, interim: bool = True, endpointing: bool = True,
                         on_message: Callable[[dict], None] | None = None, name: str = "",
                         retry: RetryPolicy | None = RetryPolicy(),
                         hotwords: list[tuple[str, float]] = ()) -> FileResult:
    """Stream 16 kHz float samples to `url` (ws://host:port/v1/stream) and collect the results.
    A replica that drains (1001) or is full (1013) is left for another, and the stream goes on
    there from its last final (`mtspeech.resumable_stream`; `retry=None`: never). `hotwords`:
    (phrase, boost) pairs for the stream's `start`."""
    frame = SAMPLE_RATE * frame_ms // 1000

    async def frames():
        t0 = time.monotonic()
        for i in range(0, len(samples), frame):
            if realtime:  # pace like a live source: frame k leaves at k * frame_ms
                await asyncio.sleep(max(0.0, t0 + i / SAMPLE_RATE - time.monotonic()))
            yield samples[i : i + frame]

    r = await stream_audio(url, frames(), api_key, interim, endpointing, on_message, name, retry,
                           hotwords=[{"phrase": p, "boost": b} for p, b in hotwords])
    return FileResult(name, r.finals, r.partials, r.errors, r.reconnects)


def _printer(name: str, out: TextIO) -> Callable[[dict], None]:
    def show(msg: dict) -> None:
        if msg["type"] == "partial":
            out.write(f"{name} ... {msg['text']}\n")
        elif msg["type"] == "final":
            out.write(f"{name} [{msg['start']:.2f}-{msg['end']:.2f}] {msg['text']}\n")
        elif msg["type"] == "error":
            out.write(f"{name} error {msg['code']}: {msg['message']}\n")
        out.flush()

    return show


def transcribe_files(server_url: str, files: list[str | Path], realtime: bool = False,
                     api_key: str | None = None, frame_ms: int = 100, show_partials: bool = True,
                     out: TextIO | None = None, retry: RetryPolicy | None = RetryPolicy(),
                     hotwords: list[tuple[str, float]] = ()) -> list[FileResult]:
    """Stream each file to the server (one after another), printing partials and finals. A file
    that cannot be read gets an `unreadable_audio` error result; the others are still sent.
    `retry`: how a stream moves to another replica; `hotwords`: each stream's (`stream_samples`)."""
    from mtspeech.data.audio import AudioError

    out = out or sys.stdout
    url = server_url.rstrip("/")
    if url.startswith("http"):
        url = "ws" + url[4:]
    if not url.endswith("/v1/stream"):
        url += "/v1/stream"

    async def run() -> list[FileResult]:
        results = []
        for path in files:
            try:
                samples = _load(path)
            except AudioError as e:
                results.append(_unreadable(path, e))
                continue
            results.append(await stream_samples(
                url, samples, realtime, frame_ms, api_key, interim=show_partials,
                on_message=_printer(str(path), out), name=str(path), retry=retry, hotwords=hotwords))
        return results

    return asyncio.run(run())


def transcribe_local(model_path: str | Path, files: list[str | Path], device: str = "cpu",
                     out: TextIO | None = None, streaming=None, decoding=None,
                     backend: str = "torch-eager", hotwords: list[tuple[str, float]] = ()) -> list[FileResult]:
    """Decode files in-process with the streaming recognizer (no server) that `mtspeech serve`
    would build from the same checkpoint and `decoding` (`DecodingConfig`; default: its
    defaults, so `auto`); an unreadable file gets an error result, as in `transcribe_files`.
    `backend`: eager by default, since tracing at start costs more than it saves on a few files;
    `hotwords`: (phrase, boost) pairs the default decoder favours (it must be a beam decoder)."""
    from mtspeech.data.audio import AudioError
    from mtspeech.decoding.loader import load_recognizer

    out = out or sys.stdout
    rec = load_recognizer(model_path, decoding, backend, streaming=streaming, device=device)
    results = []
    for path in files:
        try:
            finals = rec.transcribe(_load(path), hotwords=hotwords)
        except AudioError as e:
            results.append(_unreadable(path, e))
            continue
        res = FileResult(str(path), finals=[
            {"type": "final", "text": f.text, "start": f.start, "end": f.end,
             "words": [vars(w) for w in f.words]} for f in finals])
        for f in res.finals:
            _printer(str(path), out)(f)
        results.append(res)
    return results


def parse_hotword_flags(values: list[str] | None) -> list[tuple[str, float]]:
    """`--hotword PHRASE[:BOOST]` values → (phrase, boost) pairs, checked as a server checks a
    `start` list (`streaming.hotwords.parse_hotwords`); raises ValueError naming the entry. The
    text after the last colon is the boost only if it reads as a number."""
    if not values:
        return []  # no import: the streaming package (torch) stays unloaded for a plain --server run
    from mtspeech.streaming.hotwords import DEFAULT_BOOST, parse_hotwords

    pairs = []
    for value in values:
        phrase, _, boost = value.rpartition(":")
        try:
            pairs.append((phrase, float(boost)) if phrase else (value, DEFAULT_BOOST))
        except ValueError:
            pairs.append((value, DEFAULT_BOOST))
    parse_hotwords(pairs)
    return pairs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`mtspeech transcribe` flags."""
    parser.add_argument("files", nargs="+", help="audio files (anything soundfile reads)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="server URL, e.g. ws://127.0.0.1:8000 (streams over /v1/stream)")
    where.add_argument("--model", help="checkpoint to decode locally, without a server")
    parser.add_argument("--realtime", action="store_true", help="send audio at real-time pace")
    parser.add_argument("--frame-ms", type=int, default=100, help="audio per WebSocket frame")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--max-reconnects", type=int, default=RetryPolicy.max_retries,
                        help="with --server: attempts in a row to move a stream to another replica after the "
                             "server closes it with 1001 (draining) or 1013 (full); 0: never")
    parser.add_argument("--no-partials", action="store_true", help="ask for finals only")
    parser.add_argument("--device", default="cpu", help="local decoding device")
    # With --model: the decoder `mtspeech serve` would build from the same checkpoint and flags.
    from mtspeech.decoding import config as decoding

    decoding.add_arguments(parser)
    parser.add_argument("--backend", choices=decoding.BACKENDS, default="torch-eager",
                        help="with --model: what runs the encoder (as `mtspeech serve --backend`)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per file at the end")
    parser.add_argument("--hotword", action="append", default=None, metavar="PHRASE[:BOOST]",
                        help="a phrase the beam decoders favour, optionally with its boost (default: the "
                             "protocol's); repeat for more (docs/server.md, Hotwords)")


def main(args: argparse.Namespace) -> int:
    """Run `mtspeech transcribe`; exit status 1 when any file got an error, 2 when the server
    cannot be reached."""
    from websockets.exceptions import InvalidHandshake, InvalidURI

    try:
        hotwords = parse_hotword_flags(args.hotword)
    except ValueError as e:
        print(f"mtspeech transcribe: --hotword: {e}", file=sys.stderr)
        return 2
    if args.server:
        if args.max_reconnects < 0:
            print(f"mtspeech transcribe: --max-reconnects {args.max_reconnects}: expected >= 0", file=sys.stderr)
            return 2
        try:
            retry = RetryPolicy(max_retries=args.max_reconnects) if args.max_reconnects > 0 else None
            results = transcribe_files(args.server, args.files, args.realtime, args.api_key, args.frame_ms,
                                       show_partials=not args.no_partials, retry=retry, hotwords=hotwords)
        except (OSError, InvalidURI, InvalidHandshake) as e:  # refused, unreachable, not our server
            print(f"mtspeech transcribe: cannot stream to {args.server}: {e}", file=sys.stderr)
            return 2
    else:
        from mtspeech.checkpoint import CheckpointError
        from mtspeech.decoding.config import DecodingError, from_args

        try:
            results = transcribe_local(args.model, args.files, args.device, decoding=from_args(args),
                                       backend=args.backend, hotwords=hotwords)
        except (DecodingError, CheckpointError, ValueError) as e:  # ValueError: hotwords greedy cannot take
            print(f"mtspeech transcribe: {e}", file=sys.stderr)
            return 2
    if args.json:
        for r in results:
            print(json.dumps({"file": r.path, "text": r.text, "finals": r.finals, "errors": r.errors,
                              "reconnects": [vars(c) for c in r.reconnects]}))
    return 1 if any(r.errors for r in results) else 0
