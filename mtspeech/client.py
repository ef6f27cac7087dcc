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


@dataclass
class FileResult:
    """What the server (or the local recognizer) returned for one file."""

    path: str
    finals: list[dict] = field(default_factory=list)  # {"text", "start", "end", "words"}
    partials: int = 0
    errors: list[dict] = field(default_factory=list)

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


def to_pcm16(samples: np.ndarray) -> bytes:
    """float samples in [-1, 1] → little-endian 16-bit PCM bytes (clipped)."""
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


async def stream_samples(url: str, samples: np.ndarray, realtime: bool = False, frame_ms: int = 100,
                         api_key: str | None = None, interim: bool = True, endpointing: bool = True,
                         on_message: Callable[[dict], None] | None = None, name: str = "") -> FileResult:
    """Stream 16 kHz float samples to `url` (ws://host:port/v1/stream) and collect the results."""
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    result = FileResult(name)
    frame = SAMPLE_RATE * frame_ms // 1000
    async with connect(url, additional_headers=headers, max_size=2**22, open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le",
                                  "interim_results": interim, "endpointing": endpointing}))

        async def send_audio():
            t0 = time.monotonic()
            for i in range(0, len(samples), frame):
                if realtime:  # pace like a live source: frame k leaves at k * frame_ms
                    await asyncio.sleep(max(0.0, t0 + i / SAMPLE_RATE - time.monotonic()))
                await ws.send(to_pcm16(samples[i : i + frame]))
            await ws.send(json.dumps({"type": "stop"}))

        sender = asyncio.create_task(send_audio())
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if on_message is not None:
                    on_message(msg)
                if msg["type"] == "final":
                    result.finals.append(msg)
                elif msg["type"] == "partial":
                    result.partials += 1
                elif msg["type"] == "error":
                    result.errors.append(msg)
                elif msg["type"] == "end":
                    break
        finally:
            sender.cancel()
    return result


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
                     out: TextIO | None = None) -> list[FileResult]:
    """Stream each file to the server (one after another), printing partials and finals. A file
    that cannot be read gets an `unreadable_audio` error result; the others are still sent."""
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
                on_message=_printer(str(path), out), name=str(path)))
        return results

    return asyncio.run(run())


def transcribe_local(model_path: str | Path, files: list[str | Path], device: str = "cpu",
                     out: TextIO | None = None, streaming=None, decoding=None,
                     backend: str = "torch-eager") -> list[FileResult]:
    """Decode files in-process with the streaming recognizer (no server) that `mtspeech serve`
    would build from the same checkpoint and `decoding` (`DecodingConfig`; default: its
    defaults, so `auto`); an unreadable file gets an error result, as in `transcribe_files`.
    `backend`: eager by default, since tracing at start costs more than it saves on a few files."""
    from mtspeech.data.audio import AudioError
    from mtspeech.decoding.loader import load_recognizer

    out = out or sys.stdout
    rec = load_recognizer(model_path, decoding, backend, streaming=streaming, device=device)
    results = []
    for path in files:
        try:
            finals = rec.transcribe(_load(path))
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`mtspeech transcribe` flags."""
    parser.add_argument("files", nargs="+", help="audio files (anything soundfile reads)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="server URL, e.g. ws://127.0.0.1:8000 (streams over /v1/stream)")
    where.add_argument("--model", help="checkpoint to decode locally, without a server")
    parser.add_argument("--realtime", action="store_true", help="send audio at real-time pace")
    parser.add_argument("--frame-ms", type=int, default=100, help="audio per WebSocket frame")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--no-partials", action="store_true", help="ask for finals only")
    parser.add_argument("--device", default="cpu", help="local decoding device")
    # With --model: the decoder `mtspeech serve` would build from the same checkpoint and flags.
    from mtspeech.decoding import config as decoding

    decoding.add_arguments(parser)
    parser.add_argument("--backend", choices=decoding.BACKENDS, default="torch-eager",
                        help="with --model: what runs the encoder (as `mtspeech serve --backend`)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per file at the end")


def main(args: argparse.Namespace) -> int:
    """Run `mtspeech transcribe`; exit status 1 when any file got an error, 2 when the server
    cannot be reached."""
    from websockets.exceptions import InvalidHandshake, InvalidURI

    if args.server:
        try:
            results = transcribe_files(args.server, args.files, args.realtime, args.api_key, args.frame_ms,
                                       show_partials=not args.no_partials)
        except (OSError, InvalidURI, InvalidHandshake) as e:  # refused, unreachable, not our server
            print(f"mtspeech transcribe: cannot stream to {args.server}: {e}", file=sys.stderr)
            return 2
    else:
        from mtspeech.checkpoint import CheckpointError
        from mtspeech.decoding.config import DecodingError, from_args

        try:
            results = transcribe_local(args.model, args.files, args.device, decoding=from_args(args),
                                       backend=args.backend)
        except (DecodingError, CheckpointError) as e:
            print(f"mtspeech transcribe: {e}", file=sys.stderr)
            return 2
    if args.json:
        for r in results:
            print(json.dumps({"file": r.path, "text": r.text, "finals": r.finals, "errors": r.errors}))
    return 1 if any(r.errors for r in results) else 0
