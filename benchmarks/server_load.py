"""Server load: latency, real-time factor and CPU of `mtspeech serve` under N concurrent live streams.

Starts `mtspeech serve --model CKPT` (the same command line, `python -m mtspeech.cli serve`)
on a free loopback port in a subprocess, then for N = 1, 2, 4, ... up to `--max-streams`
(each level `--seconds-per-level` long) opens N concurrent WebSocket streams
(`/v1/stream`, docs/server.md). Each stream sends test utterances one after another (one
connection per utterance: start, audio, stop, wait for `end`) as 16-bit PCM in `--frame-ms`
frames paced at real time; streams start staggered across one encoder chunk so their chunk
boundaries do not line up artificially. No new utterance starts after the level's time is
up; a level is cut off (and its unfinished utterances counted as errors) at
`seconds-per-level + longest utterance + 60 s`.

Definitions (per level):

  partial latency   receive time of a `partial` minus the send time of the audio frame that
                    completed the encoder chunk whose decoding produced it. The chunk is known
                    exactly: each utterance is replayed once, before the levels, through a local
                    `StreamingRecognizer` built from the same checkpoint and chunking, frame by
                    frame, which gives the sequence of partial texts and the frame after which
                    each appears; received partials are matched to it in order by text
                    (`partials_unmatched` counts any that do not match, e.g. from float
                    differences of batched decoding). Partials produced by the flush at `stop`
                    are measured from the send time of `stop`. This includes queueing in the
                    batcher, so it grows when the server falls behind.
  final latency     send time of `stop` to receive time of the utterance's last `final` (or of
                    `end` when no final follows `stop`: the endpointer had already closed it).
  rtf               the server's own `mtspeech_real_time_factor` from `/metrics`: mean over the
                    level's decoding steps of (step compute time / audio in the batch).
  cpu_cores         CPU seconds of the server's processes (/proc/PID/stat, workers included) / wall seconds.
  rtf_cpu           server CPU seconds / audio seconds it received (`mtspeech_audio_seconds_total`).
  x_realtime        audio seconds received by the server / wall seconds (about N when it keeps up).
  efficiency        audio seconds per server CPU second (= 1 / rtf_cpu); `vs_n1` is it relative to
                    the N=1 level of the same run (the baseline), i.e. what batching buys.
  rss_per_stream    (peak server RSS during the level - server RSS after the warm-up) / N, in MiB:
                    what one more open stream costs in memory (caches, buffers, queues).
  mean_batch_size   streams per decoding step (`mtspeech_batch_size`), over the level.
  keeps up          no errors or unfinished utterances, p95 final latency < --max-final-latency
                    (0.5 s), p95 partial latency < --max-partial-latency (one chunk + 0.1 s:
                    0.42 s at the default 8-frame chunk) and rtf < 1.
                    `max_streams_keeping_up` is the largest N that keeps up.

By default the run stops after the first level that does not keep up (`--keep-going` runs all).
`--features plain,diarization+hotwords100` runs each level once per feature set (what a stream's
`start` asks for: speaker turns, N unrelated hotwords), interleaved, against the same server, and
reports each set's server CPU per audio second and its ratio to plain streams of the same run
(`benchmarks/_server_load_features.py`); the levels, summary and keep-up verdict above are the
first set's (plain).
`--replicas N` runs the same load through nginx in front of N replicas on this machine
(`deploy/replicas.py`; what is read from the group: `benchmarks/_server_load_replicas.py`).
`--backend torch torch-eager onnx onnx-int8` repeats the whole run per backend (`mtspeech serve --backend`;
the ONNX graphs are exported once, into a temporary folder) and reports each one.

    python benchmarks/server_load.py --model exp/synthetic/all/final.pt --levels 1,64,128,160,192 \
        --backend torch onnx onnx-int8 --out load.json
    python benchmarks/server_load.py --random-model --max-streams 4 --seconds-per-level 5
    python benchmarks/server_load.py --model exp/synthetic/all/final.pt --decoder auto --levels 8,32 \
        --repeats 3 --features plain,diarization+hotwords100 --out features.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import add_model_arguments, run_main  # noqa: E402
from _pyspy import Profile  # noqa: E402
from _server_procs import cpu_seconds_of, http_get, parse_metrics, process_tree, rss_bytes_of  # noqa: E402
from _server_load_features import (PLAIN, FeatureSet, cost_rows, parse_features, render_costs,  # noqa: E402
                                   run_order, words_of_manifest)

from mtspeech.data.geometry import SAMPLE_RATE, FrameGeometry  # noqa: E402
from mtspeech.decoding.config import DecodingConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = "data/synthetic/test.jsonl"
BACKENDS = ("torch", "torch-eager", "onnx", "onnx-int8")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    add_model_arguments(ap)
    ap.add_argument("--audio", nargs="+", help="test audio files (default: utterances of --manifest)")
    ap.add_argument("--manifest", default=DEFAULT_MANIFEST, help="JSONL manifest to take test utterances from")
    ap.add_argument("--utterances", type=int, default=4, help="how many manifest utterances to cycle through")
    ap.add_argument("--max-streams", type=int, default=16, help="levels are 1, 2, 4, ... up to this")
    ap.add_argument("--levels", help="explicit comma-separated stream counts (overrides --max-streams)")
    ap.add_argument("--seconds-per-level", type=float, default=10.0,
                    help="streams start new utterances for this long at each level")
    ap.add_argument("--frame-ms", type=int, default=40, help="audio per WebSocket frame")
    ap.add_argument("--shape", choices=["utterances", "continuous"], default="utterances",
                    help="utterances: each stream sends utterances one after another, one connection each, "
                         "streams staggered; continuous: all N streams start together and each sends "
                         "--continuous-seconds of speech (test utterances back to back) on one connection, then stop")
    ap.add_argument("--continuous-seconds", type=float, default=20.0)
    ap.add_argument("--no-endpointing", action="store_true", help='streams ask for "endpointing": false')
    ap.add_argument("--keep-going", action="store_true", help="run every level even after one fails to keep up")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each level; a level keeps up only if every run does (the committed figures: 3)")
    ap.add_argument("--max-final-latency", type=float, default=0.5, help="keep-up bound on p95 final latency (s)")
    ap.add_argument("--max-partial-latency", type=float, default=None,
                    help="keep-up bound on p95 partial latency (s; default: one chunk + 0.1 s)")
    ap.add_argument("--features", default=PLAIN,
                    help="comma-separated feature sets, each level run once per set: plain, or features joined by "
                         "'+' (diarization: speaker turns; hotwordsN: N unrelated hotwords, needs a beam decoder); "
                         "e.g. plain,diarization+hotwords100")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--profile", metavar="DIR",
                    help="py-spy record every server process during each level: raw stacks in DIR, the "
                         "functions holding the most samples in the level's JSON (`profile`)")
    srv = ap.add_argument_group("server (passed to `mtspeech serve`)")
    srv.add_argument("--device", default="cpu")
    srv.add_argument("--backend", nargs="+", choices=BACKENDS, default=["torch"],
                     help="encoder backends to measure, one full run each")
    srv.add_argument("--chunk-frames", type=int, default=8)
    srv.add_argument("--left-chunks", type=int, default=16)
    srv.add_argument("--max-batch-size", type=int, default=64)
    srv.add_argument("--max-wait-ms", type=float, default=None, help="(default: the server's)")
    srv.add_argument("--batch-target", type=int, default=None, help="(default: the server's)")
    srv.add_argument("--endpoint-mode", choices=["vad", "blank"], default="vad")
    srv.add_argument("--decoder", choices=["greedy", "beam", "phones", "auto"], default="greedy",
                     help="the streams' decoder (`mtspeech serve --decoder`; beam, phones and auto use --lm)")
    srv.add_argument("--lm", default="auto",
                     help="word LM of the beam decoders (`mtspeech serve --lm`; default auto: the checkpoint's "
                          "embedded LM); 'none': beam over pieces without a word LM")
    srv.add_argument("--workers", type=int, default=None, help="server processes (`mtspeech serve --workers`)")
    srv.add_argument("--decode-threads", type=int, default=None,
                     help="the server's concurrent decoding steps (default: the server's)")
    srv.add_argument("--intra-op-threads", type=int, default=None,
                     help="the server's threads per step (default: the server's)")
    srv.add_argument("--replicas", type=int, default=None,
                     help="N replicas behind nginx on this machine (deploy/replicas.py; each gets cores / N "
                          "workers unless --workers is given); the streams connect to nginx")
    srv.add_argument("--startup-timeout", type=float, default=180.0,
                     help="seconds to wait for /healthz (one server; --replicas: deploy/replicas.py's own wait)")


# ----------------------------------------------------------------------------- test audio


@dataclass
class TestAudio:
    """One test utterance as the client sends it, with the locally replayed partial schedule."""

    name: str
    frames: list[bytes]  # pcm_s16le, frame_ms each (the last may be shorter)
    duration: float
    partials: list[tuple[str, int]] = field(default_factory=list)  # (text, frame index; len(frames) = stop)
    finals: list[tuple[str, int]] = field(default_factory=list)  # endpointed finals: (text, frame index)


def load_test_audio(args) -> tuple[list[tuple[str, np.ndarray]], str]:
    """[(name, 16 kHz float samples)] and a description of where they came from."""
    from mtspeech.data.audio import load_audio

    def load(path) -> np.ndarray:
        wav = load_audio(path, SAMPLE_RATE)
        return np.asarray(wav.numpy() if hasattr(wav, "numpy") else wav, dtype=np.float32)

    if args.audio:
        return [(Path(p).name, load(p)) for p in args.audio], "files"
    manifest = Path(args.manifest)
    if manifest.is_file():
        from mtspeech.data.manifest import read_manifest

        utts = read_manifest(manifest)[: args.utterances]
        return [(u.id, load(u.audio)) for u in utts], f"first {len(utts)} of {manifest}"
    # Nothing to read: a tone sweep with noise (enough for a random model; meaningless text).
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    x = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.7 * t)) * t)
    x += 0.05 * np.random.default_rng(0).standard_normal(len(t))
    print(f"note: {manifest} not found and no --audio: using a 3 s synthetic signal", file=sys.stderr)
    return [("synthetic-3s", x.astype(np.float32))], "synthetic signal"


def continuous_audio(samples: list[tuple[str, np.ndarray]], seconds: float, variants: int = 4
                     ) -> list[tuple[str, np.ndarray]]:
    """`variants` long recordings of about `seconds` each: the test utterances back to back,
    each variant starting at another utterance (so streams do not all say the same thing)."""
    out = []
    for r in range(min(variants, len(samples))):
        parts, total, k = [], 0, r
        while total < seconds * SAMPLE_RATE:
            wav = samples[k % len(samples)][1]
            parts.append(wav)
            total += len(wav)
            k += 1
        out.append((f"continuous-{r}", np.concatenate(parts)))
    return out


def _lm(args) -> str | None:
    """The word LM the server's beam decoders use (None: none, or a greedy server)."""
    return None if args.decoder == "greedy" or getattr(args, "lm", "auto") == "none" else args.lm


def prepare_audio(samples: list[tuple[str, np.ndarray]], ckpt: str, args, backend: str = "torch",
                  onnx_dir: str | None = None, features: tuple[FeatureSet, ...] = (FeatureSet(PLAIN),)
                  ) -> dict[str, list[TestAudio]]:
    """Cut into PCM frames and replay locally, once per feature set as a stream asking for it
    (hotwords change the partials), to learn which frame each partial waits for: feature set
    name → the test audio."""
    import torch

    from mtspeech.client import to_pcm16
    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.streaming import StreamingConfig
    from mtspeech.streaming.endpoint import EndpointConfig

    torch.set_num_threads(1)
    cfg = StreamingConfig(chunk_frames=args.chunk_frames, left_chunks=args.left_chunks,
                          endpoint=EndpointConfig(mode=args.endpoint_mode))
    # as the server decodes: its flags (see ServerProcess), DecodingConfig's defaults otherwise
    decoding = DecodingConfig(decoder=args.decoder, lm=_lm(args))
    rec = load_recognizer(ckpt, decoding, "torch-eager", streaming=cfg)
    # partial texts as this backend's server will produce them (torch's traced step = eager)
    if backend.startswith("onnx"):
        from mtspeech.export.runtime import OnnxEncoderStep

        rec = rec.with_encoder_step(OnnxEncoderStep(onnx_dir, int8=backend == "onnx-int8", threads=1))
    step = SAMPLE_RATE * args.frame_ms // 1000
    return {f.name: [_replay(rec, name, [to_pcm16(wav[i : i + step]) for i in range(0, len(wav), step)],
                             len(wav) / SAMPLE_RATE, f, args) for name, wav in samples] for f in features}


def _replay(rec, name: str, frames: list[bytes], duration: float, features: FeatureSet, args) -> TestAudio:
    """One utterance's partial and final schedule, decoded locally frame by frame."""
    from mtspeech.serve.protocol import decode_frame
    from mtspeech.streaming import FinalEvent, PartialEvent

    audio = TestAudio(name, frames, duration)
    s = rec.new_stream(SAMPLE_RATE, endpointing=not args.no_endpointing, interim=True, **features.stream_options())
    for j, frame in enumerate(frames):
        rec.accept(s, decode_frame(frame, "pcm_s16le"))  # exactly the samples the server gets
        while rec.ready(s):
            rec.step([s])
        for e in rec.events(s):
            if isinstance(e, PartialEvent):
                audio.partials.append((e.text, j))
            elif isinstance(e, FinalEvent):
                audio.finals.append((e.text, j))
    rec.finish(s)
    audio.partials += [(e.text, len(frames)) for e in rec.events(s) if isinstance(e, PartialEvent)]
    return audio


# ----------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _or_default(value, setting: str):
    """`value`, or the server's default of `setting` (serve/limits.py) when not given."""
    from mtspeech.serve.limits import ServerSettings

    return getattr(ServerSettings, setting) if value is None else value


def serve_flags(args, max_streams: int, backend: str = "torch", onnx_dir: str | None = None) -> list[str]:
    """`mtspeech serve`'s flags for a run, but --model, --host and --port."""
    flags = ["--device", args.device,
             "--max-streams", str(max(64, 2 * max_streams)),  # room for reconnects
             "--max-batch-size", str(args.max_batch_size),
             "--chunk-frames", str(args.chunk_frames),
             "--left-chunks", str(args.left_chunks), "--endpoint-mode", args.endpoint_mode,
             "--log-level", "warning"]
    if getattr(args, "decoder", None):
        lm = _lm(args)
        flags += ["--decoder", args.decoder] + ([] if lm is None else
                                                ["--lm", lm if lm == "auto" else str(Path(lm).resolve())])
    if backend == "torch-eager":
        flags += ["--backend", "torch-eager"]
    elif backend != "torch":
        flags += ["--backend", "onnx", "--onnx-dir", str(onnx_dir)] + (["--int8"] if backend == "onnx-int8" else [])
    for flag in ("workers", "decode_threads", "intra_op_threads", "max_wait_ms", "batch_target"):
        if getattr(args, flag, None) is not None:  # --decode-threads 0 is a setting (inline steps)
            flags += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return flags


def start_server(ckpt: str, args, max_streams: int, backend: str = "torch", onnx_dir: str | None = None):
    """One server (`ServerProcess`), or `--replicas N` behind nginx (`ReplicaGroup`)."""
    flags = serve_flags(args, max_streams, backend, onnx_dir)
    if getattr(args, "replicas", None):
        from _server_load_replicas import ReplicaGroup

        return ReplicaGroup(str(Path(ckpt).resolve()), flags, args.replicas)  # replicas.py waits by its own timeout
    return ServerProcess(ckpt, flags, args.startup_timeout)


class ServerProcess:
    """`python -m mtspeech.cli serve ...` on a free loopback port."""

    def __init__(self, ckpt: str, flags: list[str], startup_timeout: float) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "mtspeech.cli", "serve", "--model", str(ckpt),
                    "--host", "127.0.0.1", "--port", str(self.port), *flags]
        self.env = os.environ.copy()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile(mode="w+")

    def __enter__(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.startup_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                if json.loads(http_get(self.base + "/healthz", 2.0))["status"] == "ok":
                    self.startup_s = time.monotonic() - t0
                    return self
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"server did not answer /healthz within {self.startup_timeout:g} s:\n{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: drains open streams
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read()[-chars:]

    def _pids(self) -> list[int]:
        """The server process and its worker processes (`serve --workers N`)."""
        return process_tree([self.proc.pid])

    def worker_pids(self) -> list[int]:
        """The processes that decode: the workers, or the server itself when it has none."""
        pids = self._pids()
        return pids[1:] or pids

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the server's processes so far (from /proc)."""
        return cpu_seconds_of(self._pids())

    def rss_bytes(self) -> int | None:
        """Resident set size of the server's processes now."""
        return rss_bytes_of(self._pids())

    def metrics(self) -> dict:
        """The /metrics samples as {(name, ((label, value), ...)): value}."""
        return parse_metrics(http_get(self.base + "/metrics").decode())

    def wait_idle(self, timeout: float = 30.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if json.loads(http_get(self.base + "/healthz"))["streams_open"] == 0:
                return
            time.sleep(0.1)


def _delta(m1: dict, m0: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
    return m1.get(key, 0.0) - m0.get(key, 0.0)


def _hist_quantile(m1: dict, m0: dict, name: str, q: float) -> float | None:
    """Prometheus-style histogram_quantile over the level's bucket deltas (None: no observations)."""
    buckets = sorted((float(dict(lbl)["le"]), _delta(m1, m0, n, **dict(lbl)))
                     for (n, lbl) in m1 if n == name + "_bucket")
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return prev_le


# ----------------------------------------------------------------------------- the clients


async def one_utterance(url: str, audio: TestAudio, frame_s: float, endpointing: bool,
                        start_fields: dict | None = None) -> dict:
    """Stream one utterance at real-time pace; latencies as defined in the module doc.
    `start_fields`: added to the `start` message (a feature set's, `FeatureSet.start_fields`)."""
    from websockets.asyncio.client import connect

    res = {"audio_s": audio.duration, "partial_latencies": [], "partials": 0, "unmatched": 0,
           "final_latency": None, "endpoint_latencies": [], "errors": [], "completed": False,
           "finals": 0, "finals_with_speaker": 0, "speaker_changes": 0}
    sent = [None] * (len(audio.frames) + 1)  # send time of each frame; the last slot is `stop`
    async with connect(url, max_size=2**22, open_timeout=20) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le",
                                  "interim_results": True, "endpointing": endpointing, **(start_fields or {})}))

        async def sender():
            t0 = time.monotonic()
            for j, frame in enumerate(audio.frames):
                wait = t0 + j * frame_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await ws.send(frame)
                sent[j] = time.monotonic()
            await ws.send(json.dumps({"type": "stop"}))
            sent[-1] = time.monotonic()

        task = asyncio.create_task(sender())
        ptr = fptr = 0  # next candidates in the local partial and final schedules
        try:
            async for raw in ws:
                now = time.monotonic()
                msg = json.loads(raw)
                kind = msg["type"]
                if kind == "final":
                    res["finals"] += 1
                    res["finals_with_speaker"] += msg.get("speaker") is not None
                elif kind == "speaker_change":
                    res["speaker_changes"] += 1
                if kind == "partial":
                    res["partials"] += 1
                    idx = next((k for k in range(ptr, len(audio.partials)) if audio.partials[k][0] == msg["text"]), None)
                    ref = None if idx is None else sent[audio.partials[idx][1]]
                    if ref is None:
                        res["unmatched"] += 1
                    else:
                        ptr = idx + 1
                        res["partial_latencies"].append(now - ref)
                elif kind == "final" and sent[-1] is not None:
                    res["final_latency"] = now - sent[-1]  # the last final after stop wins
                elif kind == "final":  # endpointed while speech goes on: from the frame that closed it
                    idx = next((k for k in range(fptr, len(audio.finals)) if audio.finals[k][0] == msg["text"]), None)
                    if idx is not None and sent[audio.finals[idx][1]] is not None:
                        fptr = idx + 1
                        res["endpoint_latencies"].append(now - sent[audio.finals[idx][1]])
                elif kind == "error":
                    res["errors"].append(msg.get("code", "?"))
                elif kind == "end":
                    if res["final_latency"] is None and sent[-1] is not None:
                        res["final_latency"] = now - sent[-1]
                    res["completed"] = sent[-1] is not None
                    break
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return res


async def run_level(url: str, audios: list[TestAudio], n: int, args, start_fields: dict | None = None) -> list[dict]:
    """N streams, each sending utterances back to back until the level's time is up (each
    `start` with `start_fields` added)."""
    frame_s = args.frame_ms / 1000
    chunk_s = args.chunk_frames * FrameGeometry().frame_shift_s
    deadline = time.monotonic() + args.seconds_per_level

    async def stream(i: int) -> list[dict]:
        if args.shape == "continuous":  # all together, one long recording each
            audio = audios[i % len(audios)]
            try:
                return [await asyncio.wait_for(
                    one_utterance(url, audio, frame_s, not args.no_endpointing, start_fields), audio.duration + 60)]
            except Exception as e:  # noqa: BLE001 — counted as the level's error
                return [{"audio_s": 0.0, "partial_latencies": [], "partials": 0, "unmatched": 0,
                         "final_latency": None, "errors": [type(e).__name__], "completed": False}]
        await asyncio.sleep(chunk_s * i / n)  # spread chunk boundaries across streams
        results, k = [], i
        while not results or time.monotonic() < deadline:
            audio = audios[k % len(audios)]
            k += 1
            try:
                results.append(await asyncio.wait_for(
                    one_utterance(url, audio, frame_s, not args.no_endpointing, start_fields), audio.duration + 60))
            except Exception as e:  # a refused or broken connection, a timeout: count it, go on
                results.append({"audio_s": 0.0, "partial_latencies": [], "partials": 0, "unmatched": 0,
                                "final_latency": None, "errors": [type(e).__name__], "completed": False})
                await asyncio.sleep(0.2)  # do not spin on a server that refuses everything
        return results

    tasks = [asyncio.create_task(stream(i)) for i in range(n)]
    limit = args.seconds_per_level + max(a.duration for a in audios) + 60
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for t in pending:
        t.cancel()
    out = [r for t in done if not t.cancelled() and t.exception() is None for r in t.result()]
    out += [{"audio_s": 0.0, "partial_latencies": [], "partials": 0, "unmatched": 0, "final_latency": None,
             "errors": ["level_timeout"], "completed": False} for _ in pending]
    return out


# ----------------------------------------------------------------------------- the benchmark


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def levels_of(args) -> list[int]:
    if args.levels:
        return sorted({int(x) for x in args.levels.split(",") if x.strip()})
    out, n = [], 1
    while n < args.max_streams:
        out.append(n)
        n *= 2
    return out + [args.max_streams]


def summarize(n: int, utts: list[dict], m0: dict, m1: dict, cpu_s: float | None, wall: float,
              client_cpu_s: float, args, rss_peak: int | None = None, rss_base: int | None = None) -> dict:
    partial = [x for u in utts for x in u["partial_latencies"]]
    first_partial = [u["partial_latencies"][0] for u in utts if u["partial_latencies"]]
    endpoint = [x for u in utts for x in u.get("endpoint_latencies", [])]
    lag = [max(u["partial_latencies"]) for u in utts if u["partial_latencies"]]  # each stream's worst
    final = [u["final_latency"] for u in utts if u["final_latency"] is not None]
    errors = [e for u in utts for e in u["errors"]]
    audio_s = _delta(m1, m0, "mtspeech_audio_seconds_total", source="stream")
    steps = _delta(m1, m0, "mtspeech_real_time_factor_count")
    rtf = _delta(m1, m0, "mtspeech_real_time_factor_sum") / steps if steps else None
    batches = _delta(m1, m0, "mtspeech_batch_size_count")
    level = {
        "streams": n,
        "wall_s": round(wall, 3),
        "utterances": len(utts),
        "completed": sum(u["completed"] for u in utts),
        "errors": len(errors),
        "error_codes": sorted(set(errors)),
        "audio_s": round(audio_s, 3),
        "x_realtime": round(audio_s / wall, 3) if wall else None,
        "partials": sum(u["partials"] for u in utts),
        "partials_unmatched": sum(u["unmatched"] for u in utts),
        "partial_latency_p50_s": _pct(partial, 50),
        "partial_latency_p95_s": _pct(partial, 95),
        "partial_latency_max_s": _pct(partial, 100),
        "final_latency_p50_s": _pct(final, 50),
        "final_latency_p95_s": _pct(final, 95),
        "final_latency_max_s": _pct(final, 100),
        "first_partial_latency_p50_s": _pct(first_partial, 50),
        "first_partial_latency_p95_s": _pct(first_partial, 95),
        "endpoint_latency_p50_s": _pct(endpoint, 50),
        "endpoint_latency_p95_s": _pct(endpoint, 95),
        "stream_lag_p95_s": _pct(lag, 95),
        "server_partial_latency_p95_s": _round(_hist_quantile(m1, m0, "mtspeech_partial_latency_seconds", 0.95)),
        "server_final_latency_p95_s": _round(_hist_quantile(m1, m0, "mtspeech_final_latency_seconds", 0.95)),
        "rtf": _round(rtf),
        "decode_steps": int(steps),
        "mean_batch_size": _round(_delta(m1, m0, "mtspeech_batch_size_sum") / batches if batches else None),
        "server_cpu_s": _round(cpu_s),
        "cpu_cores": _round(cpu_s / wall if cpu_s is not None and wall else None),
        "rtf_cpu": _round(cpu_s / audio_s if cpu_s and audio_s else None),
        "efficiency_audio_s_per_cpu_s": _round(audio_s / cpu_s if cpu_s else None),
        "client_cpu_s": round(client_cpu_s, 3),
        "rss_peak_mib": _round(rss_peak / 2**20 if rss_peak else None, 1),
        "rss_per_stream_mib": _round((rss_peak - rss_base) / 2**20 / n if rss_peak and rss_base else None, 3),
        "client_cpu_cores": _round(client_cpu_s / wall if wall else None),
        **{k: sum(u.get(k, 0) for u in utts) for k in ("finals", "finals_with_speaker", "speaker_changes")},
    }
    why = []
    if level["errors"] or level["completed"] < level["utterances"]:
        why.append(f"{level['errors']} errors, {level['utterances'] - level['completed']} unfinished")
    if level["final_latency_p95_s"] is None or level["final_latency_p95_s"] >= args.max_final_latency:
        why.append(f"final p95 {level['final_latency_p95_s']} s >= {args.max_final_latency:g} s")
    if level["partial_latency_p95_s"] is not None and level["partial_latency_p95_s"] >= args.max_partial_latency:
        why.append(f"partial p95 {level['partial_latency_p95_s']} s >= {args.max_partial_latency:g} s")
    if rtf is not None and rtf >= 1.0:
        why.append(f"rtf {rtf:.3f} >= 1")
    level["keeps_up"] = not why
    level["why_not"] = why
    return level


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


async def _run_levels(server: ServerProcess, audios: dict[str, list[TestAudio]], features: list[FeatureSet],
                      args) -> list[dict]:
    url = f"ws://127.0.0.1:{server.port}/v1/stream"
    # Warm-up: one utterance per feature set (first-call allocations, lazy imports, the server's
    # build of a hotword list, which it keeps) outside every level.
    for f in features:
        await one_utterance(url, audios[f.name][0], args.frame_ms / 1000, not args.no_endpointing, f.start_fields())
    server.wait_idle()
    rss_base = server.rss_bytes()
    results = []
    runs = ((n, r, f) for n in levels_of(args) for r in range(args.repeats) for f in run_order(features, r))
    for n, repeat, feature in runs:
        if results and results[-1]["streams"] < n and not args.keep_going and \
                not all(lv["keeps_up"] for lv in results if lv["streams"] == results[-1]["streams"]):
            break
        server.wait_idle()
        await asyncio.sleep(2.5)  # past the server's decode-lag window (serve/lag.py): no carried-over refusals
        m0, c0, r0, t0 = server.metrics(), server.cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        workers0 = {pid: cpu_seconds_of([pid]) for pid in server.worker_pids()}
        balancer = getattr(server, "balancer_cpu_seconds", None)  # nginx's share, with --replicas
        b0 = balancer() if balancer else None
        rss_peak = [server.rss_bytes() or 0]

        async def watch_rss():  # the level's peak RSS, sampled while its streams are open
            while True:
                rss_peak[0] = max(rss_peak[0], server.rss_bytes() or 0)
                await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch_rss())
        profile = contextlib.nullcontext() if not args.profile else \
            Profile(server.worker_pids(), Path(args.profile) / f"level-{n}-repeat-{repeat}-{feature.name}")
        with profile as prof:
            utts = await run_level(url, audios[feature.name], n, args, feature.start_fields())
        watcher.cancel()
        server.wait_idle()
        wall = time.monotonic() - t0
        m1, c1, r1 = server.metrics(), server.cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
        cpu = None if c0 is None or c1 is None else c1 - c0
        client_cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        level = summarize(n, utts, m0, m1, cpu, wall, client_cpu, args, rss_peak[0] or None, rss_base)
        level["repeat"], level["features"] = repeat, feature.name
        if b0 is not None:
            level["balancer_cpu_s"] = round(balancer() - b0, 3)
        # Each decoding process's CPU over the level, largest first: a worker can use one core, so
        # one that got more than its share of the streams falls behind while the others idle.
        level["worker_cpu_s"] = sorted((round(cpu_seconds_of([pid]) - c, 2) for pid, c in workers0.items()
                                        if c is not None and cpu_seconds_of([pid]) is not None), reverse=True)
        if prof is not None:
            level["profile"] = prof.summary
        results.append(level)
        print(_row(level, next(lv for lv in results if lv["features"] == feature.name)) +
              ("" if len(features) == 1 else f"  [{feature.name}]"), flush=True)
    return results


def run(args) -> dict:
    if args.max_partial_latency is None:  # a partial may wait for its chunk's audio, then 100 ms
        args.max_partial_latency = round(args.chunk_frames * FrameGeometry().frame_shift_s + 0.1, 3)
    if min(levels_of(args)) < 1:
        raise SystemExit("stream counts (--max-streams, --levels) must be >= 1")
    features = parse_features(args.features, words_of_manifest(args.manifest))
    if any(f.hotwords for f in features) and args.decoder == "greedy":
        raise SystemExit("--features with hotwords: the server's decoder must be a beam decoder (--decoder beam, "
                         "phones or auto with an LM; --decoder beam --lm none without one); greedy cannot be biased")
    ckpt, tmp = args.model, None
    if args.random_model:
        from _tiny_model import build_random_checkpoint

        tmp = tempfile.TemporaryDirectory(prefix="mtspeech_bench_")
        ckpt = str(build_random_checkpoint(Path(tmp.name) / "tiny_random.pt",
                                           speaker=any(f.speakers for f in features)))
    onnx_tmp = None
    try:
        samples, source = load_test_audio(args)
        if args.shape == "continuous":
            samples = continuous_audio(samples, args.continuous_seconds)
            source += f", back to back in {len(samples)} recordings of >= {args.continuous_seconds:g} s"
        onnx_dir = None
        if any(b.startswith("onnx") for b in args.backend):
            onnx_tmp = tempfile.TemporaryDirectory(prefix="mtspeech_bench_onnx_")
            onnx_dir = _export_onnx(ckpt, onnx_tmp.name, args)
        per_backend = {}
        for backend in dict.fromkeys(args.backend):
            audios = prepare_audio(samples, ckpt, args, backend, onnx_dir, tuple(features))
            with start_server(ckpt, args, max(levels_of(args)), backend, onnx_dir) as server:
                plain = audios[features[0].name]
                print(f"[{backend}] server up on port {server.port} after {server.startup_s:.1f} s; "
                      f"{len(plain)} test utterances ({source}), {sum(a.duration for a in plain):.1f} s",
                      flush=True)
                print(_header(), flush=True)
                per_backend[backend] = asyncio.run(_run_levels(server, audios, features, args))
    finally:
        for t in (tmp, onnx_tmp):
            if t is not None:
                t.cleanup()
    results = {b: _result(levels, args, source, audios[features[0].name], features)
               for b, levels in per_backend.items()}
    first = results[next(iter(results))]
    # one backend: its result once (a "backends" copy would double the file)
    return first | {"backend": next(iter(results))} | ({"backends": results} if len(results) > 1 else {})


def _export_onnx(ckpt: str, out_dir: str, args) -> str:
    """The checkpoint's streaming step as ONNX (+ int8 when measured) in `out_dir`."""
    from mtspeech.checkpoint import load_model
    from mtspeech.export.onnx import export_onnx
    from mtspeech.export.quantize import quantize_int8

    model, _, _ = load_model(ckpt)
    export_onnx(model, out_dir, args.chunk_frames, args.left_chunks, checkpoint=ckpt)
    if "onnx-int8" in args.backend:
        quantize_int8(out_dir)
    return out_dir


def _result(levels: list[dict], args, source: str, audios: list[TestAudio],
            features: Sequence[FeatureSet] = (FeatureSet(PLAIN),)) -> dict:
    """One backend's run as the benchmark reports it: levels, summary and keep-up verdict of the
    first feature set; with several sets, the others' levels and the cost rows beside them."""
    first = features[0].name
    others = [lv for lv in levels if lv.get("features", first) != first]
    levels = [lv for lv in levels if lv.get("features", first) == first]
    for group in (levels, others):
        for lv in group:  # relative to the first level of the same feature set
            lv["efficiency_vs_n1"] = _vs(lv, next(x for x in group if x.get("features") == lv.get("features")))
    base = levels[0]
    by_n: dict[int, list[dict]] = {}
    for lv in levels:
        by_n.setdefault(lv["streams"], []).append(lv)
    ok = [n for n, runs in by_n.items() if all(lv["keeps_up"] for lv in runs)]
    return {
        "benchmark": "server_load",
        "model": "random-tiny" if args.random_model else str(args.model),
        "audio": {"source": source, "utterances": [{"name": a.name, "duration_s": round(a.duration, 3),
                                                    "local_partials": len(a.partials)} for a in audios]},
        "settings": {k: getattr(args, k) for k in ("shape", "continuous_seconds", "repeats", "frame_ms", "seconds_per_level", "chunk_frames", "left_chunks",
                                                   "max_batch_size", "endpoint_mode", "decoder", "device",
                                                   "workers", "decode_threads", "intra_op_threads", "replicas", "max_final_latency",
                                                   "max_partial_latency", "features")}
                    | {"endpointing": not args.no_endpointing, "cpu_count": os.cpu_count(),
                       "beam_threshold": DecodingConfig.beam_threshold,  # the server's default pruning
                       # batching as the server ran it: the flags given, else its defaults
                       "max_wait_ms": _or_default(args.max_wait_ms, "max_wait_ms"),
                       "batch_target": _or_default(args.batch_target, "batch_target")},
        "keep_up_definition": (f"no errors or unfinished utterances, p95 final latency < {args.max_final_latency:g} s, "
                               f"p95 partial latency < {args.max_partial_latency:g} s, rtf < 1"),
        "baseline": {"streams": base["streams"], "efficiency_audio_s_per_cpu_s": base["efficiency_audio_s_per_cpu_s"]},
        "levels": levels,
        "summary": [{"streams": n, "repeats": len(runs), "keeps_up": n in ok,
                     **{k: max((lv[k] for lv in runs if lv.get(k) is not None), default=None)
                        for k in ("final_latency_p95_s", "partial_latency_p95_s", "first_partial_latency_p95_s",
                                  "endpoint_latency_p95_s", "stream_lag_p95_s")},
                     "errors": sum(lv.get("errors", 0) for lv in runs),
                     "x_realtime_min": min(lv.get("x_realtime") or 0.0 for lv in runs)} for n, runs in by_n.items()],
        "max_streams_keeping_up": max(ok) if ok else 0,
    } | ({} if len(features) == 1 else {"feature_sets": [f.describe() for f in features], "feature_levels": others,
                                        "feature_costs": cost_rows(levels + others)})


def _vs(level: dict, base: dict) -> float | None:
    """Efficiency (audio-s per server CPU-s) of `level` relative to the baseline level."""
    e0, e = base["efficiency_audio_s_per_cpu_s"], level["efficiency_audio_s_per_cpu_s"]
    return _round(e / e0 if e and e0 else None, 3)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.0f}"


def _num(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _header() -> str:
    return (f"{'N':>3} {'utts':>5} {'audio s':>8} {'xRT':>6} {'partial p50/p95 ms':>19} {'final p50/p95 ms':>17} "
            f"{'rtf':>6} {'batch':>5} {'cpu':>5} {'client':>6} {'audio-s/cpu-s':>13} {'vs N1':>6} {'keeps up':>8}")


def _row(lv: dict, base: dict) -> str:
    part = f"{_ms(lv['partial_latency_p50_s'])}/{_ms(lv['partial_latency_p95_s'])}"
    fin = f"{_ms(lv['final_latency_p50_s'])}/{_ms(lv['final_latency_p95_s'])}"
    return (f"{lv['streams']:>3} {lv['completed']:>2}/{lv['utterances']:<2} {lv['audio_s']:>8.1f} "
            f"{_num(lv['x_realtime'], '{:.2f}'):>6} {part:>19} {fin:>17} {_num(lv['rtf']):>6} "
            f"{_num(lv['mean_batch_size'], '{:.1f}'):>5} {_num(lv['cpu_cores'], '{:.2f}'):>5} "
            f"{_num(lv['client_cpu_cores'], '{:.2f}'):>6} {_num(lv['efficiency_audio_s_per_cpu_s'], '{:.1f}'):>13} "
            f"{_num(_vs(lv, base), '{:.2f}x'):>6} {'yes' if lv['keeps_up'] else 'NO':>8}"
            + ("" if lv["keeps_up"] else f"  ({'; '.join(lv['why_not'])})"))


def render(result: dict) -> str:
    runs = result.get("backends") or {"torch": result}
    out = [(f"== backend {name}\n" if len(runs) > 1 else "") + _render_one(r) for name, r in runs.items()]
    if len(runs) > 1:
        out.append("backend     streams kept up  mean batch  p95 final s  p95 partial s  RSS/stream MiB (at that N)")
        for name, r in runs.items():
            best = next((lv for lv in r["levels"] if lv["streams"] == r["max_streams_keeping_up"]), r["levels"][0])
            out.append(f"{name:<11} {r['max_streams_keeping_up']:>15} {_num(best['mean_batch_size'], '{:.2f}'):>11} "
                       f"{_num(best['final_latency_p95_s']):>12} {_num(best['partial_latency_p95_s']):>14} "
                       f"{_num(best.get('rss_per_stream_mib'), '{:.2f}'):>15}")
    return "\n".join(out)


def render_summary(results: dict[str, dict]) -> str:
    """One line per run (JSON file): its configuration, the levels it tried, the largest N every
    repeat kept up at ("≥" when that is the highest level tried: the limit lies above) and the
    efficiency there (audio-s per server CPU-s, median over the repeats)."""
    lines = [f"{'run':<38} {'backend':<9} {'decoder':<7} {'shape':<10} {'replicas':>8} {'repeats':>7} "
             f"{'levels':>9} {'kept up':>7} {'audio-s/cpu-s':>13}"]
    for name, result in results.items():
        for backend, r in (result.get("backends") or {result.get("backend", "torch"): result}).items():
            st, n = r["settings"], r["max_streams_keeping_up"]
            tried = sorted({lv["streams"] for lv in r["levels"]})
            eff = sorted(lv["efficiency_audio_s_per_cpu_s"] for lv in r["levels"]
                         if lv["streams"] == n and lv.get("efficiency_audio_s_per_cpu_s") is not None)
            kept = ("≥" if n == tried[-1] else "") + str(n)
            lines.append(f"{name:<38} {backend:<9} {st['decoder']:<7} {st['shape']:<10} {st.get('replicas') or 1:>8} "
                         f"{st['repeats']:>7} {f'{tried[0]}-{tried[-1]}':>9} {kept:>7} "
                         f"{(f'{eff[len(eff) // 2]:.1f}' if eff else '-'):>13}")
    return "\n".join(lines)


def _render_one(result: dict) -> str:
    levels, others = result["levels"], result.get("feature_levels") or []
    lines = [f"feature set {levels[0]['features']}:"] if others else []
    replicas = result["settings"].get("replicas")
    if replicas:
        lines.append(f"{replicas} replicas behind nginx (deploy/replicas.py) on {result['settings']['cpu_count']} "
                     "cores; cpu counts every replica and nginx, and the latencies include nginx's hop")
    lines += [_header()] + [_row(lv, levels[0]) for lv in levels]
    b = result["baseline"]
    lines.append(f"throughput relative to the baseline (N={b['streams']}, "
                 f"{_num(b['efficiency_audio_s_per_cpu_s'], '{:.1f}')} audio-s per server CPU-s, this run): "
                 + ", ".join(f"N={lv['streams']}: {_num(lv['efficiency_vs_n1'], '{:.2f}')}x" for lv in levels))
    summary = result.get("summary") or []
    if any(row["repeats"] > 1 for row in summary):
        lines.append("per N over its repeats (worst p95 of any repeat, seconds): a level keeps up only if every "
                     "repeat does")
        lines.append(f"{'N':>4} {'runs':>4} {'keeps up':>8} {'final':>6} {'partial':>7} {'1st partial':>11} "
                     f"{'endpoint':>8} {'stream lag':>10} {'errors':>6} {'min xRT':>7}")
        for row in summary:
            lines.append(f"{row['streams']:>4} {row['repeats']:>4} {'yes' if row['keeps_up'] else 'NO':>8} "
                         f"{_num(row['final_latency_p95_s']):>6} {_num(row['partial_latency_p95_s']):>7} "
                         f"{_num(row['first_partial_latency_p95_s']):>11} {_num(row['endpoint_latency_p95_s']):>8} "
                         f"{_num(row['stream_lag_p95_s']):>10} {row['errors']:>6} {row['x_realtime_min']:>7.1f}")
    split = [lv for lv in levels if len(lv.get("worker_cpu_s") or []) > 1 and sum(lv["worker_cpu_s"])]
    if split:
        lines.append("the busiest decoding process's share of their CPU, per level and repeat (1/N: even): " + ", ".join(
            f"N={lv['streams']}: {lv['worker_cpu_s'][0] / sum(lv['worker_cpu_s']):.0%}" for lv in split))
    if any("balancer_cpu_s" in lv for lv in levels):
        lines.append("nginx's share of the cpu column, per level: " + ", ".join(
            f"N={lv['streams']}: {lv['balancer_cpu_s'] / lv['server_cpu_s']:.1%}" for lv in levels
            if lv.get("balancer_cpu_s") is not None and lv.get("server_cpu_s")))
    lines.append(f"keeps up = {result['keep_up_definition']}")
    lines.append(f"largest N that keeps up with real time: {result['max_streams_keeping_up']}")
    if others:
        lines.append("the other feature sets (the same run, each level interleaved with the one above; vs N1: "
                     "against the set's own first level)")
        lines += [_header()] + [_row(lv, next(x for x in others if x["features"] == lv["features"]))
                                + f"  [{lv['features']}]" for lv in others]
        lines += render_costs(result)
    for lv in levels + others:
        if lv.get("profile"):
            p = lv["profile"]
            lines.append(f"py-spy, N={lv['streams']} repeat {lv['repeat']} [{lv.get('features', 'plain')}] "
                         f"({p['samples']} samples at {p['rate_hz']} Hz over the server processes; share of "
                         "samples with the function on the stack):")
            lines += [f"  {share:6.1%}  {name}" for name, share in p["inclusive"][:30]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
