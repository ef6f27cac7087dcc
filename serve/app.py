"""The mtspeech inference server: composes the routes around one `StreamingRecognizer` (and one
per adapted model of `--adapted`: serve/adapted.py).

Routes: `WS /v1/stream` (serve/ws.py), `POST /v1/transcribe`, OpenAI-compatible
`POST /v1/audio/transcriptions`, `GET /healthz`, `GET /metrics` (serve/http.py), `GET /`
(microphone page). `serve/server.py` holds the shared state; this module is the app factory,
its lifespan and error handlers, uvicorn with a graceful SIGTERM, and the CLI. (ws.py and
http.py never import this module, so there is no cycle.)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
from pathlib import Path
from typing import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect

from mtspeech.decoding import config as decoding
from mtspeech.serve import http, ws
from mtspeech.serve import protocol as P
from mtspeech.serve.incidents import internal_error
from mtspeech.serve.limits import STREAMS_PER_CORE, ServerSettings
from mtspeech.serve.routing import ServedModel
from mtspeech.serve.server import APIError, Server
from mtspeech.streaming import StreamingConfig, StreamingRecognizer
from mtspeech.streaming.endpoint import EndpointConfig

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
CLIENT_CLOSED_REQUEST = 499  # nginx's code: nobody reads it, but access logs show what happened


def create_app(recognizer_or_model_path: StreamingRecognizer | str | Path,
               settings: ServerSettings | None = None, streaming: StreamingConfig | None = None,
               device: str = "cpu", adapted: Mapping[str, ServedModel] | None = None) -> FastAPI:
    """The FastAPI app serving a recognizer (or a checkpoint path, loaded here by
    `load_recognizer` with the default `DecodingConfig` and the eager torch step) and, for the
    API keys of `adapted` (serve/adapted.py: `load_adapted`), their adapted models."""
    settings = settings or ServerSettings()
    recognizer = recognizer_or_model_path
    if not isinstance(recognizer, StreamingRecognizer):
        from mtspeech.decoding.loader import load_recognizer

        recognizer = load_recognizer(recognizer_or_model_path, backend="torch-eager", streaming=streaming,
                                     device=device)
    server = Server(recognizer, settings, adapted)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        yield
        await server.drain()
        await server.batcher.stop()
        server.close()

    app = FastAPI(title="mtspeech", version="0.1.0", lifespan=lifespan)
    app.state.server = server
    app.include_router(http.router)
    app.include_router(ws.router)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        server.metrics.errors.labels(exc.code.value).inc()
        kind = "server_error" if exc.status >= 500 else "invalid_request_error"
        body = P.HTTPError(error=P.HTTPErrorBody(message=exc.message, type=kind, code=exc.code, param=exc.param))
        return JSONResponse(body.model_dump(mode="json"), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        detail = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return await _api_error(request, APIError(400, P.ErrorCode.bad_request, detail[:500]))

    @app.exception_handler(ClientDisconnect)
    @app.exception_handler(http.ClientGone)
    async def _client_gone(request: Request, exc: Exception):
        # An ordinary event, not a server error: no traceback in the log.
        server.metrics.errors.labels(P.ErrorCode.client_disconnected.value).inc()
        log.info("client disconnected before its answer: %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        message = internal_error(f"{request.method} {request.url.path}", exc)
        return await _api_error(request, APIError(500, P.ErrorCode.internal, message))

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app


# ----------------------------------------------------------------------------- running it


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", fd: int | None = None):
    """Serve `app` with uvicorn until interrupted; open streams are finalized before exit.
    `fd`: accept on this inherited listening socket instead of binding host:port (a worker)."""
    server = build_uvicorn(app, host, port, log_level, fd=fd)
    server.run()


def build_uvicorn(app: FastAPI, host: str, port: int, log_level: str = "info", fd: int | None = None):
    """A uvicorn Server whose shutdown first drains open streams (tests run it in a thread)."""
    import uvicorn

    settings: ServerSettings = app.state.server.settings

    class GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            # uvicorn closes WebSockets before the app's lifespan shutdown runs, so drain first:
            # streams get their finals, HTTP transcriptions finish (both within the grace).
            await app.state.server.drain()
            await super().shutdown(sockets)

        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            # uvicorn re-raises a caught SIGTERM after shutdown (exit status 143); a drained,
            # orderly shutdown is a success, so exit 0 instead.
            if sig == signal.SIGTERM:
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    # Frames up to 4x the limit reach the app and get a clear error; larger ones are cut by uvicorn.
    # No ping timeout: under backpressure a fast client's pong waits behind megabytes of its own
    # audio in TCP buffers, and uvicorn would kill a healthy, flowing stream. Silent peers are
    # ended by the stream's own idle timeout instead.
    # No permessage-deflate: PCM audio barely compresses, and inflating every frame cost the
    # event loop a third of its time at 128 streams (py-spy, docs in benchmarks/README.md).
    where = {"fd": fd} if fd is not None else {"host": host, "port": port}
    config = uvicorn.Config(app, **where, log_level=log_level,
                            ws_max_size=4 * settings.max_frame_bytes + 1024, lifespan="on",
                            ws_per_message_deflate=False,
                            ws_ping_timeout=None,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s + 1.0)
    return GracefulServer(config)


def _workers(value: str) -> int:
    """`--workers`: a count >= 1, or auto (one per core)."""
    import os

    if value == "auto":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of processes or auto") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: expected >= 1")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`mtspeech serve` flags."""
    d = ServerSettings()
    parser.add_argument("--model", required=True, help="checkpoint to serve (from `mtspeech train`)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--max-streams", type=int, default=None,
                        help="concurrent streams, a hard cap (then 503/1013); default: "
                             f"{STREAMS_PER_CORE} per core, what the load benchmark measured the default server "
                             "keep up with (docs/deploy.md, Capacity)")
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    parser.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                        help="how long a ready stream may wait for a batch of --batch-target streams")
    parser.add_argument("--batch-target", type=int, default=d.batch_target,
                        help="streams a step waits (up to --max-wait-ms) to batch together")
    parser.add_argument("--workers", type=_workers, default="auto",
                        help="server processes sharing the port, each with its own model and a share of "
                             "--max-streams (default auto: one per core; one process is bound by its GIL, "
                             "not by the cores: see serve/workers.py and docs/deploy.md)")
    parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # a worker's inherited socket
    parser.add_argument("--decode-threads", type=int, default=None,
                        help="decoding steps run at once, each on its own thread with its own streams; 0 runs "
                             "them on the event loop's thread, one at a time (default: 0 in each worker of "
                             "--workers N > 1; one process: 2 on 2 or more cores, else 1)")
    parser.add_argument("--intra-op-threads", type=int, default=None,
                        help="threads of one step's encoder (torch and onnxruntime; default: the cores "
                             "divided by --decode-threads)")
    parser.add_argument("--max-frame-bytes", type=int, default=d.max_frame_bytes)
    parser.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes)
    parser.add_argument("--max-stream-seconds", type=float, default=d.max_stream_seconds)
    parser.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, help="seconds without a message")
    parser.add_argument("--max-buffered-seconds", type=float, default=d.max_buffered_seconds,
                        help="audio per stream waiting to be decoded before the server stops reading it")
    parser.add_argument("--max-decode-lag", type=float, default=d.max_decode_lag_s, metavar="SECONDS",
                        help="refuse new streams (1013 / 503) while decoding runs this far behind real time, "
                             "so the open ones keep their latency (0: only --max-streams limits)")
    parser.add_argument("--shutdown-timeout", type=float, default=d.shutdown_timeout_s,
                        help="SIGTERM: seconds to let open streams and HTTP transcriptions finish")
    parser.add_argument("--api-key", default=None, help="require this key (default: env MTSPEECH_API_KEY)")
    parser.add_argument("--adapted", default=None, metavar="FILE",
                        help='JSON or YAML {"keys": {KEY: {"model": CHECKPOINT} or {"delta": DELTA}}}: requests '
                             "with KEY are decoded by that adapted model (`mtspeech adapt`), others by --model; "
                             "its keys are accepted besides --api-key (docs/server.md, Adapted models)")
    parser.add_argument("--chunk-frames", type=int, default=StreamingConfig.chunk_frames,
                        help="encoder frames (40 ms) per chunk")
    parser.add_argument("--left-chunks", type=int, default=StreamingConfig.left_chunks)
    parser.add_argument("--endpoint-mode", choices=["vad", "blank"], default="vad")
    parser.add_argument("--endpoint-min-speech", type=float, default=EndpointConfig.min_speech_s, metavar="SECONDS",
                        help="a speech run shorter than this inside a pause holds its silence count instead of "
                             "restarting it (a hangover against noise bursts; 0: any speech frame restarts it)")
    # --decoder (default auto: the best the checkpoint allows), --lm, --beam-size, --lm-weight, ...:
    # the flags and defaults every decoding command shares (DecodingConfig). A start message may
    # pick another decoder the server has.
    decoding.add_arguments(parser)
    parser.add_argument("--backend", choices=decoding.BACKENDS, default="torch",
                        help="what runs the encoder and heads: PyTorch, its full-chunk step traced to one "
                             "TorchScript graph at startup (eager if the trace fails or differs); PyTorch "
                             "eager; or the ONNX export under onnxruntime (features and token decoding stay "
                             "the same)")
    parser.add_argument("--onnx-dir", default=None,
                        help="with --backend onnx: a `mtspeech export onnx` folder of this checkpoint "
                             "(default: export at startup into a temporary folder)")
    parser.add_argument("--int8", action="store_true", help="with --backend onnx: run the int8 (quantized) graph")
    parser.add_argument("--log-level", default="info")


def main(args: argparse.Namespace) -> int:
    """Run `mtspeech serve`. Every flag is checked before a model loads or a port is bound."""
    import os

    cores = os.cpu_count() or 1
    if args.max_streams is None:
        args.max_streams = STREAMS_PER_CORE * cores
    decode_threads = args.decode_threads if args.decode_threads is not None else (2 if cores >= 2 else 1)
    intra_op = args.intra_op_threads or max(1, cores // max(decode_threads, 1))
    try:
        if decode_threads < 0 or intra_op < 1:
            raise ValueError("--decode-threads must be >= 0 and --intra-op-threads >= 1")
        settings = ServerSettings(
            max_streams=args.max_streams, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
            batch_target=args.batch_target, decode_threads=decode_threads,
            max_frame_bytes=args.max_frame_bytes, max_upload_bytes=args.max_upload_bytes,
            max_stream_seconds=args.max_stream_seconds, idle_timeout_s=args.idle_timeout,
            max_buffered_seconds=args.max_buffered_seconds, shutdown_timeout_s=args.shutdown_timeout,
            max_decode_lag_s=args.max_decode_lag,
            api_key=args.api_key or os.environ.get("MTSPEECH_API_KEY") or None,
        )
        endpoint = EndpointConfig(mode=args.endpoint_mode, min_speech_s=args.endpoint_min_speech)
        decoding_config = decoding.from_args(args)
        if not Path(args.model).is_file():
            raise ValueError(f"--model {args.model}: no such checkpoint file")
        if args.adapted is not None:  # the file itself, before any model loads (workers check the models)
            from mtspeech.serve.adapted import read_key_map

            read_key_map(args.adapted, settings.api_key)
    except ValueError as e:
        log.error("mtspeech serve: %s", e)
        return 2
    if args.workers > 1 and args.fd is None:  # the supervisor loads no model: its workers do
        from mtspeech.serve.workers import supervise

        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return supervise(args, parser)
    import torch

    torch.set_num_threads(intra_op)  # onnxruntime sessions take the same count (export/runtime.py)
    log.info("decoding: %d concurrent steps x %d intra-op threads (%d cores)", decode_threads, intra_op, cores)
    streaming = StreamingConfig(chunk_frames=args.chunk_frames, left_chunks=args.left_chunks, endpoint=endpoint)
    from mtspeech.checkpoint import CheckpointError
    from mtspeech.decoding.loader import load_recognizer

    try:
        recognizer = load_recognizer(args.model, decoding_config, args.backend, streaming=streaming,
                                     device=args.device, onnx_dir=args.onnx_dir, int8=args.int8)
        adapted = None
        if args.adapted is not None:
            from mtspeech.serve.adapted import load_adapted

            adapted = load_adapted(args.adapted, args.model, recognizer, backend=args.backend, int8=args.int8,
                                   api_key=settings.api_key)
    except (ValueError, CheckpointError) as e:
        log.error("mtspeech serve: %s", e)
        return 2
    app = create_app(recognizer, settings, adapted=adapted)
    run(app, args.host, args.port, args.log_level, fd=args.fd)
    return 0
