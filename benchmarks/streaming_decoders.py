"""Streaming accuracy and cost of each token decoder the server offers, on one test manifest.

    python benchmarks/streaming_decoders.py --model exp/synthetic/all/final.pt \
        --manifest data/synthetic/test.jsonl --lm auto --beam-size 20 --lm-weight 1.0 --out dec.json

Every utterance goes through `StreamingRecognizer` chunk by chunk (the server's code path,
`--chunk-frames` 40 ms frames a chunk, unlimited-but-bounded left context as `mtspeech
serve` uses, endpointing on), once per decoder: `greedy`, `beam` (over the ASR pieces, with
the LM through a piece lexicon when `--lm` is given) and `phones` (the phone head through
CMUdict + the LM; only with `--lm` and a phone head). It reports CER and WER of the joined
finals against the manifest's text (`mtspeech.metrics`, the normalised scoring `mtspeech
evaluate` uses) and the real-time factor (decoding wall time / audio time, one stream at a
time on this machine), with each decoder's RTF relative to greedy's in the same run.
"""

from __future__ import annotations

import time

import numpy as np

from _cli import add_model_arguments, run_main

from mtspeech.decoding.config import DecodingConfig

FEED_SECONDS = 0.1  # audio enters each stream 100 ms at a time, as a live client sends it


def add_arguments(ap) -> None:
    add_model_arguments(ap)
    ap.add_argument("--manifest", default="data/synthetic/test.jsonl")
    ap.add_argument("--limit", type=int, default=None, help="first N utterances only")
    ap.add_argument("--lm", default=None, help="ARPA word LM, or 'auto' (as mtspeech serve --lm)")
    ap.add_argument("--beam-size", type=int, default=DecodingConfig.beam_size)
    ap.add_argument("--lm-weight", type=float, default=DecodingConfig.lm_weight)
    ap.add_argument("--chunk-frames", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", default=None)


def run(args) -> dict:
    import torch

    from mtspeech.data.audio import load_audio
    from mtspeech.data.manifest import read_manifest
    from mtspeech.metrics import cer, wer
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.streaming import SAMPLE_RATE, StreamingConfig

    torch.set_num_threads(args.threads)
    model = args.model
    if args.random_model:
        import tempfile

        from _tiny_model import build_random_checkpoint

        model = build_random_checkpoint(tempfile.mkdtemp() + "/random.pt")
    decoding = DecodingConfig(decoder="beam", lm=args.lm, beam_size=args.beam_size, lm_weight=args.lm_weight)
    rec = load_recognizer(model, decoding, "torch-eager", streaming=StreamingConfig(chunk_frames=args.chunk_frames))
    utts = [u for u in read_manifest(args.manifest) if u.text][: args.limit]
    if not utts:
        raise SystemExit(f"{args.manifest}: no utterance with a transcript to score")
    audio = [load_audio(u.audio).numpy() for u in utts]
    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    feed = int(FEED_SECONDS * SAMPLE_RATE)
    results = {}
    for name in rec.decoders:
        hyps, elapsed = [], 0.0
        for samples in audio:
            t0 = time.perf_counter()
            s = rec.new_stream(SAMPLE_RATE, endpointing=True, interim=True, decoder=name)
            for i in range(0, len(samples), feed):
                rec.accept(s, samples[i: i + feed])
                while rec.ready(s):
                    rec.step([s])
            rec.finish(s)
            finals = [e.text for e in rec.events(s) if type(e).__name__ == "FinalEvent"]
            elapsed += time.perf_counter() - t0
            hyps.append(" ".join(finals))
        refs = [u.text for u in utts]
        results[name] = {"cer": cer(refs, hyps).rate, "wer": wer(refs, hyps).rate, "rtf": elapsed / seconds}
    base = results["greedy"]["rtf"]
    for r in results.values():
        r["rtf_vs_greedy"] = r["rtf"] / base if base else float("nan")
    return {"benchmark": "streaming_decoders", "model": "random-tiny" if args.random_model else str(args.model),
            "manifest": args.manifest, "utterances": len(utts), "audio_s": round(seconds, 2),
            "settings": {"lm": args.lm, "beam_size": args.beam_size, "lm_weight": args.lm_weight,
                         "chunk_frames": args.chunk_frames, "threads": args.threads},
            "decoders": results}


def render(result: dict) -> str:
    lines = [f"{result['utterances']} utterances, {result['audio_s']} s of audio; chunk "
             f"{result['settings']['chunk_frames']} frames; LM {result['settings']['lm']}",
             f"{'decoder':8s} {'CER':>7s} {'WER':>7s} {'RTF':>7s} {'vs greedy':>10s}"]
    for name, r in result["decoders"].items():
        lines.append(f"{name:8s} {r['cer']:7.2%} {r['wer']:7.2%} {r['rtf']:7.3f} {r['rtf_vs_greedy']:9.2f}x")
    return "\n".join(lines)


def main(argv=None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
