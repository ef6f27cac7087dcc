"""Error of the word-time scheme (mtspeech/alignment.py) against the synthetic corpus's exact boundaries.

    python benchmarks/word_times.py --model exp/synthetic/all/final.pt \
        --manifest data/synthetic/test.jsonl --out word_times.json

Ground truth. `mtspeech synth` renders each sentence as 1-3 phrases (espeak-ng, silence trimmed
at 0.2 % of the peak) with pauses between them, and its manifest's `speech` segments are those
phrases, exact to the sample. So the first word of each phrase starts exactly at its segment's
start and the last word ends exactly at its end; words inside a phrase have no exact boundary
and are not measured. Which words form each phrase is not in the manifest: it is recovered by
replaying the synthesizer's plan from its config (`corpus/synth.json`) and its per-utterance
random phrase split (`default_rng([seed, index])`), and checked: every replayed text must equal
the manifest's, and the phrase count must equal the segment count (else the utterance is left
out and counted).

Hypotheses. Each utterance is decoded twice, both timed by the one scheme:
  - `server`: the streaming recognizer (the server's code path: chunks of `--chunk-frames`,
    endpointing on, `--decoder`), words from its finals;
  - `evaluate`: `mtspeech evaluate`'s path (full-context forward, greedy, `add_word_times`).
A boundary is measured when its reference word is matched to an identical hypothesis word
(difflib alignment of the word sequences). Errors are hypothesis minus truth, in ms.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np

from _cli import add_model_arguments, run_main


def add_arguments(ap) -> None:
    add_model_arguments(ap)
    ap.add_argument("--manifest", default="data/synthetic/test.jsonl")
    ap.add_argument("--synth-config", default=None,
                    help="the corpus's synth.json (default: corpus/synth.json next to the manifest)")
    ap.add_argument("--decoder", default="greedy", choices=["greedy", "beam", "phones"],
                    help="the server path's decoder (beam / phones need --lm)")
    ap.add_argument("--lm", default=None, help="ARPA word LM, or 'auto' (as mtspeech serve --lm)")
    ap.add_argument("--chunk-frames", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="first N utterances only")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--out", default=None)


# ----------------------------------------------------------------------------- ground truth


def replay_plan(synth_json: Path) -> dict[str, tuple[int, str]]:
    """utt_id → (job index, text) of a corpus written by `mtspeech synth`, replayed from its
    config exactly as `synthesize_corpus` plans it (no audio is rendered)."""
    from mtspeech.data import synth as S

    cfg = S.corpus_config(synth_json.parent)
    _speakers, plan, _counts = S.plan_corpus(cfg)
    index, out = 0, {}
    for split in S.SPLITS:
        for utt_id, _spk, text in plan[split]:
            out[utt_id] = (index, text)
            index += 1
    return out, cfg.seed


def boundaries(utt, index: int, seed: int) -> list[tuple[int, str, float]] | None:
    """Exact boundaries of `utt`: (word index, "start" | "end", seconds), or None when its
    phrases do not match its speech segments (a phrase trimmed to nothing)."""
    from mtspeech.data.synth import _phrases

    phrases = _phrases(utt.text.split(), np.random.default_rng([seed, index]))
    if len(phrases) != len(utt.speech):
        return None
    out, first = [], 0
    for phrase, (start, end) in zip(phrases, utt.speech):
        n = len(phrase.split())
        out += [(first, "start", start), (first + n - 1, "end", end)]
        first += n
    return out


def errors_ms(ref_words: list[str], hyp_words, truth) -> dict[str, list[float]]:
    """Signed errors (hypothesis - truth, ms) of the boundaries whose word was recognised."""
    matcher = difflib.SequenceMatcher(a=ref_words, b=[w.word for w in hyp_words], autojunk=False)
    to_hyp = {blk.a + k: blk.b + k for blk in matcher.get_matching_blocks() for k in range(blk.size)}
    out = {"start": [], "end": []}
    for i, side, seconds in truth:
        if i in to_hyp:
            w = hyp_words[to_hyp[i]]
            out[side].append(1000.0 * ((w.start if side == "start" else w.end) - seconds))
    return out


def summary(errors: list[float], possible: int) -> dict:
    e = np.asarray(errors)
    if not len(e):
        return {"measured": 0, "possible": possible}
    a = np.abs(e)
    return {"measured": len(e), "possible": possible, "mean_abs_ms": round(float(a.mean()), 1),
            "median_abs_ms": round(float(np.median(a)), 1), "p90_abs_ms": round(float(np.quantile(a, 0.9)), 1),
            "mean_signed_ms": round(float(e.mean()), 1),
            "within_40ms": round(float((a <= 40).mean()), 3), "within_80ms": round(float((a <= 80).mean()), 3)}


# ----------------------------------------------------------------------------- the run


def run(args) -> dict:
    import torch

    from mtspeech.checkpoint import load_model
    from mtspeech.data.audio import load_audio
    from mtspeech.data.manifest import read_manifest
    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.decoding.ctc import GreedyDecoder, add_word_times
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.streaming import StreamingConfig

    torch.set_num_threads(args.threads)
    if args.random_model:
        raise SystemExit("word times need a trained model and its synthetic corpus: pass --model")
    manifest = Path(args.manifest)
    synth_json = Path(args.synth_config) if args.synth_config else manifest.parent / "corpus" / "synth.json"
    plan, seed = replay_plan(synth_json)
    utts = [u for u in read_manifest(manifest) if u.text and u.speech][: args.limit]
    wrong = [u.id for u in utts if u.id not in plan or plan[u.id][1] != u.text]
    if wrong:
        raise SystemExit(f"{synth_json}: replaying the plan does not give the manifest's texts for {wrong[:3]} "
                         f"({len(wrong)} of {len(utts)}): not the corpus this config wrote")

    rec = load_recognizer(args.model, DecodingConfig(decoder=args.decoder, lm=args.lm), "torch-eager",
                          streaming=StreamingConfig(chunk_frames=args.chunk_frames))
    model, _exp, _ = load_model(args.model)
    model.eval()
    table = rec.tokenizer
    greedy = GreedyDecoder(table)
    errs = {path: {"start": [], "end": []} for path in ("server", "evaluate")}
    possible = {"start": 0, "end": 0}
    skipped = []
    for u in utts:
        truth = boundaries(u, plan[u.id][0], seed)
        if truth is None:
            skipped.append(u.id)
            continue
        for _, side, _ in truth:
            possible[side] += 1
        wav = load_audio(u.audio)
        ref = u.text.split()
        server_words = [w for f in rec.transcribe(wav.numpy(), endpointing=True) for w in f.words]
        with torch.inference_mode():
            enc = model.encode(wav[None], torch.tensor([len(wav)]))
            log_probs = model.task_logits(enc)[model.asr_task].float().log_softmax(-1)
        hyp = add_word_times(greedy.decode(log_probs, enc.lens), log_probs, enc.lens, table, rec.frame_shift_s)[0]
        for path, words in (("server", server_words), ("evaluate", hyp.words)):
            for side, e in errors_ms(ref, words, truth).items():
                errs[path][side] += e
    return {"manifest": str(manifest), "model": args.model, "decoder": args.decoder,
            "chunk_frames": args.chunk_frames, "frame_shift_ms": round(1000 * rec.frame_shift_s, 1),
            "utterances": len(utts), "skipped_phrase_mismatch": skipped,
            "server": {side: summary(errs["server"][side], possible[side]) for side in ("start", "end")},
            "evaluate": {side: summary(errs["evaluate"][side], possible[side]) for side in ("start", "end")}}


def render(r: dict) -> str:
    lines = [f"word-time error on {r['manifest']} ({r['utterances']} utterances, {len(r['skipped_phrase_mismatch'])} "
             f"left out; encoder frame {r['frame_shift_ms']} ms). Hypothesis - truth, ms:",
             "| path | boundary | measured / exact | mean abs | median abs | p90 abs | mean signed | <= 40 ms | <= 80 ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for path, label in (("server", f"server ({r['decoder']}, chunk {r['chunk_frames']})"),
                        ("evaluate", "evaluate (greedy, full context)")):
        for side in ("start", "end"):
            s = r[path][side]
            if not s["measured"]:
                lines.append(f"| {label} | word {side} | 0 / {s['possible']} | | | | | | |")
                continue
            lines.append(f"| {label} | word {side} | {s['measured']} / {s['possible']} | {s['mean_abs_ms']} | "
                         f"{s['median_abs_ms']} | {s['p90_abs_ms']} | {s['mean_signed_ms']:+} | "
                         f"{s['within_40ms']:.0%} | {s['within_80ms']:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(__doc__, add_arguments, run, render)
