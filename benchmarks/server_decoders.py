"""Streaming accuracy and server CPU cost of each decoder, through `mtspeech serve` itself.

    python benchmarks/server_decoders.py --model exp/synthetic/all/final.pt \
        --manifest data/synthetic/test.jsonl --decoders greedy beam phones --lm auto \
        --beam-size 20 --lm-weight 1.0 --out server_decoders.json
    python benchmarks/server_decoders.py --random-model --manifest M.jsonl --decoders greedy  # smoke run

Starts `mtspeech serve` in a subprocess on a free loopback port (`ServerProcess` of
`server_load.py`, plus `--lm`, `--beam-size`, `--lm-weight`), then, one decoder after
another, streams every utterance of `--manifest` that has a transcript over `WS /v1/stream`
(docs/server.md): `start` with the stream's `decoder`, endpointing and interim results on
(the server's defaults), the audio as 16-bit PCM in `--frame-ms` frames sent as fast as
the socket takes them (faster than real time: the server's backpressure paces the client),
`stop`, then every message until `end`. `--streams N` keeps N such connections open at once.

Per decoder it reports CER and WER of the utterance's finals joined by spaces against the
manifest's text (`mtspeech.metrics`, the normalised scoring `mtspeech evaluate` and
`streaming_decoders.py` use), and the server's cost:

  cpu_rtf       CPU seconds of the server process (user + system, all threads, from
                /proc/PID/stat) while the decoder's utterances ran / audio seconds the server
                received (`mtspeech_audio_seconds_total` from `/metrics`); contention on the
                machine does not inflate it the way it inflates wall time.
  step_rtf      the server's own `mtspeech_real_time_factor` (mean step wall time / audio).
  vs_greedy     cpu_rtf / greedy's cpu_rtf in the same run (the baseline; greedy is run
                whenever it is not in --decoders).

One warm-up utterance per decoder runs before its measurement. The same audio through the
in-process recognizer is `streaming_decoders.py`; with one stream the two see the same
chunks and the same endpointing, the only difference being the 16-bit quantisation here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import add_model_arguments, run_main  # noqa: E402
from server_load import ServerProcess, _delta, serve_flags  # noqa: E402

from mtspeech.data.geometry import SAMPLE_RATE  # noqa: E402
from mtspeech.decoding.config import DecodingConfig  # noqa: E402

DECODERS = ("greedy", "beam", "phones")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    add_model_arguments(ap)
    ap.add_argument("--manifest", default="data/synthetic/test.jsonl")
    ap.add_argument("--limit", type=int, default=None, help="first N utterances with a transcript only")
    ap.add_argument("--decoders", nargs="+", choices=DECODERS, default=list(DECODERS))
    ap.add_argument("--lm", default=None, help="ARPA word LM, or 'auto' (passed to mtspeech serve --lm)")
    ap.add_argument("--beam-size", type=int, default=DecodingConfig.beam_size)
    ap.add_argument("--lm-weight", type=float, default=DecodingConfig.lm_weight)
    ap.add_argument("--frame-ms", type=int, default=100, help="audio per WebSocket frame")
    ap.add_argument("--streams", type=int, default=1, help="concurrent connections (1: batches of one stream)")
    ap.add_argument("--utterance-timeout", type=float, default=600.0, help="seconds allowed for one utterance")
    ap.add_argument("--out", default=None)
    srv = ap.add_argument_group("server (passed to `mtspeech serve`)")
    srv.add_argument("--device", default="cpu")
    srv.add_argument("--chunk-frames", type=int, default=8)
    srv.add_argument("--left-chunks", type=int, default=16)
    srv.add_argument("--max-batch-size", type=int, default=16)
    srv.add_argument("--max-wait-ms", type=float, default=10.0)
    srv.add_argument("--endpoint-mode", choices=["vad", "blank"], default="vad")
    srv.add_argument("--decode-threads", type=int, default=1, help="the server's concurrent decoding steps")
    srv.add_argument("--intra-op-threads", type=int, default=1, help="the server's threads per step")
    srv.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /healthz")


def _check(args) -> None:
    if "phones" in args.decoders and not args.lm:
        raise SystemExit("--decoders phones needs --lm (ARPA or auto): the server offers it only with a word LM")
    if args.streams < 1 or args.frame_ms < 1 or (args.limit is not None and args.limit < 1):
        raise SystemExit("--streams, --frame-ms and --limit must be >= 1")


def _server_cmd_extra(args) -> list[str]:
    """Flags beyond `ServerProcess`'s: the decoders to offer and a long idle timeout (slow machines)."""
    extra = ["--beam-size", str(args.beam_size), "--lm-weight", str(args.lm_weight), "--idle-timeout", "600"]
    if args.lm:
        extra += ["--lm", args.lm if args.lm == "auto" else str(Path(args.lm).resolve())]
    elif "beam" in args.decoders:
        extra += ["--decoder", "beam"]  # beam without an LM: offered only as the server's default
    return extra


async def stream_utterance(url: str, frames: list[bytes], decoder: str, timeout_s: float) -> list[str]:
    """One utterance over /v1/stream, sent as fast as the server reads it; the final texts."""
    from websockets.asyncio.client import connect

    finals: list[str] = []

    async def talk() -> None:
        async with connect(url, max_size=2**22, open_timeout=60) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le",
                                      "interim_results": True, "endpointing": True, "decoder": decoder}))

            async def send_audio() -> None:
                for frame in frames:
                    await ws.send(frame)  # blocks while the server's backlog is full (backpressure)
                await ws.send(json.dumps({"type": "stop"}))

            sender = asyncio.create_task(send_audio())
            try:
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg["type"] == "final":
                        finals.append(msg["text"])
                    elif msg["type"] == "error":
                        raise RuntimeError(f"server error with decoder {decoder!r}: {msg['code']}: {msg['message']}")
                    elif msg["type"] == "end":
                        return
                raise RuntimeError("the server closed the stream without `end`")
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender

    await asyncio.wait_for(talk(), timeout_s)
    return finals


async def stream_all(url: str, utterances: list[list[bytes]], decoder: str, streams: int,
                     timeout_s: float) -> list[str]:
    """Every utterance through `streams` concurrent connections; hypotheses in manifest order."""
    hyps: list[str | None] = [None] * len(utterances)
    queue = list(range(len(utterances)))[::-1]

    async def worker() -> None:
        while queue:
            i = queue.pop()
            hyps[i] = " ".join(t for t in await stream_utterance(url, utterances[i], decoder, timeout_s) if t)

    await asyncio.gather(*(worker() for _ in range(min(streams, len(utterances)))))
    return hyps  # type: ignore[return-value]


def load_frames(utts, frame_ms: int) -> tuple[list[list[bytes]], float]:
    """Each utterance as pcm_s16le frames of `frame_ms`, and the total audio seconds."""
    from mtspeech.client import to_pcm16
    from mtspeech.data.audio import load_audio

    step = SAMPLE_RATE * frame_ms // 1000
    out, samples = [], 0
    for u in utts:
        wav = load_audio(u.audio, SAMPLE_RATE).numpy().astype(np.float32)
        out.append([to_pcm16(wav[i: i + step]) for i in range(0, len(wav), step)])
        samples += len(wav)
    return out, samples / SAMPLE_RATE


def measure(server: ServerProcess, decoder: str, frames: list[list[bytes]], refs: list[str], args) -> dict:
    """Stream the manifest with one decoder; its accuracy and the server's CPU per audio second."""
    from mtspeech.metrics import cer, wer

    url = f"ws://127.0.0.1:{server.port}/v1/stream"
    asyncio.run(stream_utterance(url, frames[0], decoder, args.utterance_timeout))  # warm-up, not counted
    server.wait_idle()
    m0, c0, t0 = server.metrics(), server.cpu_seconds(), time.monotonic()
    hyps = asyncio.run(stream_all(url, frames, decoder, args.streams, args.utterance_timeout))
    server.wait_idle()
    wall, m1, c1 = time.monotonic() - t0, server.metrics(), server.cpu_seconds()
    audio_s = _delta(m1, m0, "mtspeech_audio_seconds_total", source="stream")
    steps = _delta(m1, m0, "mtspeech_real_time_factor_count")
    cpu_s = None if c0 is None or c1 is None else c1 - c0
    c, w = cer(refs, hyps), wer(refs, hyps)
    return {"cer": c.rate, "wer": w.rate, "cer_errors": c.errors, "ref_chars": c.ref_len,
            "audio_s": round(audio_s, 3), "wall_s": round(wall, 3),
            "server_cpu_s": None if cpu_s is None else round(cpu_s, 3),
            "cpu_rtf": cpu_s / audio_s if cpu_s is not None and audio_s else None,
            "step_rtf": _delta(m1, m0, "mtspeech_real_time_factor_sum") / steps if steps else None,
            "hypotheses": hyps}


def run(args) -> dict:
    from mtspeech.data.manifest import read_manifest

    _check(args)
    utts = [u for u in read_manifest(args.manifest) if u.text][: args.limit]
    if not utts:
        raise SystemExit(f"{args.manifest}: no utterance with a transcript to score")
    frames, seconds = load_frames(utts, args.frame_ms)
    refs = [u.text for u in utts]
    decoders = list(dict.fromkeys(["greedy"] + args.decoders))  # greedy first: the baseline
    with tempfile.TemporaryDirectory(prefix="mtspeech_bench_") as tmp:
        if args.random_model:
            from _tiny_model import build_random_checkpoint

            ckpt = str(build_random_checkpoint(Path(tmp) / "tiny_random.pt"))
        else:
            ckpt = str(Path(args.model).resolve())  # the server runs from the repository root
        with ServerProcess(ckpt, serve_flags(args, args.streams) + _server_cmd_extra(args),
                           args.startup_timeout) as server:
            print(f"server up on port {server.port} after {server.startup_s:.1f} s; {len(utts)} utterances, "
                  f"{seconds:.1f} s of audio", flush=True)
            results = {}
            for name in decoders:
                results[name] = measure(server, name, frames, refs, args)
                r = results[name]
                print(f"  {name}: CER {r['cer']:.2%}, cpu_rtf {_fmt(r['cpu_rtf'])} ({r['wall_s']:.0f} s wall)",
                      flush=True)
    base = results["greedy"]["cpu_rtf"]
    for r in results.values():
        r["vs_greedy"] = r["cpu_rtf"] / base if r["cpu_rtf"] is not None and base else None
    return {"benchmark": "server_decoders", "model": "random-tiny" if args.random_model else str(args.model),
            "manifest": args.manifest, "utterances": len(utts), "audio_s": round(seconds, 2),
            "settings": {k: getattr(args, k) for k in ("lm", "beam_size", "lm_weight", "frame_ms", "streams",
                                                       "chunk_frames", "left_chunks", "max_batch_size",
                                                       "max_wait_ms", "endpoint_mode", "decode_threads", "intra_op_threads",
                                                       "device")},
            "decoders": {name: results[name] for name in decoders}}


def _fmt(x, spec: str = "{:.3f}") -> str:
    return "-" if x is None else spec.format(x)


def render(result: dict) -> str:
    s = result["settings"]
    lines = [f"{result['utterances']} utterances, {result['audio_s']} s of audio through the server; chunk "
             f"{s['chunk_frames']} frames; LM {s['lm']}; beam {s['beam_size']}, LM weight {s['lm_weight']}; "
             f"{s['streams']} stream(s); {s['decode_threads']} x {s['intra_op_threads']} server threads",
             f"{'decoder':8s} {'CER':>7s} {'WER':>7s} {'cpu RTF':>8s} {'step RTF':>9s} {'vs greedy':>10s}"]
    for name, r in result["decoders"].items():
        lines.append(f"{name:8s} {r['cer']:7.2%} {r['wer']:7.2%} {_fmt(r['cpu_rtf']):>8s} "
                     f"{_fmt(r['step_rtf']):>9s} {_fmt(r['vs_greedy'], '{:.2f}x'):>10s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
