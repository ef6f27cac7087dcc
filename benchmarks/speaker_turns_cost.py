"""CPU cost of speaker turns: the same streams decoded with and without them, in one run.

    python benchmarks/speaker_turns_cost.py --model exp/synthetic/all/final.pt --out cost.json
    python benchmarks/speaker_turns_cost.py --random-model --out cost.json   # the demo's size, random weights

`--streams` streams of `--seconds` of test signal each are stepped together through
`StreamingRecognizer` (the server's code path and default backend, one thread), once plain and
once with speaker turns (`start.speakers`), alternating `--repeats` times. The figure is
process CPU time per second of audio per stream; the ratio compares the two in the same run.
What speaker turns add: the speaker head's frames out of the step (its layer is computed
anyway), the VAD head where endpointing would not run it, and one pooling + embedding per
window of speech frames (`mtspeech/streaming/speakers.py`), per stream.

`--random-model` builds a checkpoint with the demo's encoder size (recipes/synthetic/conformer.yaml:
128 wide, 5 layers) and a speaker head on layer 0, randomly initialised, whose VAD head calls
every frame speech (so the speaker head pools every frame: the most work per second of audio,
and endpointing by the length limit only, in both conditions): costs are those of the demo's
shapes; its labels mean nothing. The result also counts the windows embedded.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from _cli import add_model_arguments, run_main


def add_arguments(ap) -> None:
    add_model_arguments(ap)
    ap.add_argument("--streams", type=int, default=8, help="streams stepped together")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", default=None)


def _signal(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Noise under a pulsing, gliding tone (as the tests' signal): speech-like enough to decode."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t + seed)
    x = 0.3 * env * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.7 * t)) * t)
    return (x + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def _cpu_per_audio_second(rec, audio: list[np.ndarray], speakers) -> float:
    streams = [rec.new_stream(speaker_turns=speakers) for _ in audio]
    start = time.process_time()
    for s, x in zip(streams, audio):
        rec.accept(s, x)
    while all(rec.ready(s) for s in streams):
        rec.step(streams)
    rec.finish_many(streams)
    for s in streams:
        rec.events(s)
    spent = time.process_time() - start
    windows = sum(s.speakers.windows_embedded for s in streams if s.speakers)
    return spent / sum(len(x) for x in audio) * rec.geometry.sample_rate, windows


def run(args) -> dict:
    import tempfile

    import torch

    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.streaming.speakers import SpeakerTurnConfig

    torch.set_num_threads(args.threads)
    model = args.model
    if args.random_model:
        from _tiny_model import all_speech_vad, build_random_checkpoint

        model = all_speech_vad(build_random_checkpoint(tempfile.mkdtemp() + "/random.pt", dim=128, layers=5,
                                                       speaker=True))
    rec = load_recognizer(model)
    audio = [_signal(args.seconds, rec.geometry.sample_rate, seed) for seed in range(args.streams)]
    _cpu_per_audio_second(rec, audio[:1], SpeakerTurnConfig())  # warm-up (and: the model has a speaker head)
    plain, turns = [], []
    for _ in range(args.repeats):
        plain.append(_cpu_per_audio_second(rec, audio, None)[0])
        cpu, windows = _cpu_per_audio_second(rec, audio, SpeakerTurnConfig())
        turns.append(cpu)
    ratios = [t / p for p, t in zip(plain, turns)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or None
    return {"benchmark": "speaker_turns_cost", "commit": commit, "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()), "model": "random-demo-size" if args.random_model else str(model),
            "backend": rec.encoder_step.name, "streams": args.streams, "seconds_per_stream": args.seconds,
            "repeats": args.repeats, "threads": args.threads, "windows_embedded_per_run": windows,
            "cpu_s_per_audio_s": {"plain": plain, "speaker_turns": turns},
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def render(r: dict) -> str:
    c = r["cpu_s_per_audio_s"]
    return (f"speaker turns, {r['streams']} streams x {r['seconds_per_stream']:g} s, {r['backend']}, "
            f"{r['threads']} thread(s), {r['repeats']} repeats, commit {r['commit']}, {r['cpus']} CPUs, "
            f"load average {r['load_average'][0]:.2f}, {r['windows_embedded_per_run']} windows embedded a run\n"
            f"  CPU s per audio s per stream: plain {statistics.median(c['plain']):.4f}, "
            f"with speaker turns {statistics.median(c['speaker_turns']):.4f}\n"
            f"  ratio: median {r['ratio_median']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]")


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
