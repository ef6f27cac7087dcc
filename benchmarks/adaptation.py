"""Fast adaptation to new voices (issue 36 item 3): CER on a voice after adapting to k of its
utterances, against no adaptation, for plain fine-tuning, a Reptile start and speaker-embedding
conditioning.

For every voice of the manifest (default split: test-voices, voices no training split has),
every k and every selection seed, k of the voice's utterances are drawn exactly as
`mtspeech adapt --k K --seed S` draws them, the set is adapted on them with `adapt`'s own inner
loop (`fine_tune`), and the CER (greedy, the one scorer `evaluate` uses) is scored on that
voice's OTHER utterances only: an utterance is never both adapted on and scored. A k that
leaves a voice nothing to score is skipped for that voice, and listed. Methods:

    none               the model as trained, on the same scored utterances (the paired baseline)
    fine-tune          the set adapted from the trained values
    reptile            the set adapted from the start `mtspeech meta-train` learned (--meta)
    speaker-embedding  no gradient step: the layer-norms values the speaker adapter of
                       `mtspeech train-speaker-adapter` (--speaker-adapter) gives for the speaker
                       head's embedding of the k utterances (`mtspeech adapt --params
                       speaker-embedding`)

A method without its checkpoint is listed under not_available with the reason; `--methods`
runs only those named (the `none` baseline always).

Intervals: per method and k, the utterances of every seed are pooled per voice and the CER and
its difference to `none` are bootstrapped over voices (`speaker_bootstrap`, a cluster bootstrap:
one voice's utterances fail together); the spread over selection seeds is reported beside it (t
interval of the per-seed CERs, `mean_std_ci`). Adaptation time: wall seconds of the steps on
`--threads` threads (2 by default, as the issue asks), median over runs; for speaker-embedding,
from the k waveforms to the set's values (their embeddings and the adapter). Delta size: bytes
of the delta file `mtspeech adapt` would write.

    mtspeech meta-train EXP/final.pt --manifest data/synthetic/train-voices.jsonl \\
        --params layer-norms --k 5 --out EXP/meta-layer-norms.pt
    python benchmarks/adaptation.py --model EXP/final.pt --meta EXP/meta-layer-norms.pt \\
        --data data/synthetic --params layer-norms --out adaptation.json
    mtspeech train-speaker-adapter EXP/final.pt --manifest data/synthetic/train.jsonl \\
        data/synthetic/train-voices.jsonl --out EXP/adapter.pt
    python benchmarks/adaptation.py --model EXP/final.pt --speaker-adapter EXP/adapter.pt \\
        --methods speaker-embedding --data data/synthetic --out adaptation-embedding.json
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from _cli import run_main

from mtspeech.adaptation import inputs
from mtspeech.adaptation.command import DEFAULT_LR, INIT_KEY, add_set_arguments, load_base, set_config
from mtspeech.adaptation.fine_tune import fine_tune
from mtspeech.adaptation.param_sets import AdaptationError, ParamSet, weights_fingerprint
from mtspeech.adaptation.speaker_adapter import ADAPTER_KEY, SpeakerAdapter, condition, load_adapter
from mtspeech.data.manifest import Utterance, read_manifest
from mtspeech.evaluation.stats import mean_std_ci, speaker_bootstrap
from mtspeech.tasks.base import ScoredBatch

METHODS = ("none", "fine-tune", "reptile", "speaker-embedding")


def char_errors(model, utts: list[Utterance], wavs: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """Utterance id → (character errors, reference characters) of the greedy ASR transcript,
    scored by the ASR task's own scorer (full context, eval mode)."""
    task = model.tasks[model.asr_task]
    scorer = task.scorer()
    out = {}
    batches = inputs.batches(utts, [wavs[u.id] for u in utts], task, 60.0, model.geometry.sample_rate)
    with torch.no_grad():
        for b in batches:
            enc = model.encode(b.wav, b.wav_lens)
            logits = model.task_logits(enc)[task.name]
            for u, rec in zip(b.utts, scorer.add(ScoredBatch(b.utts, logits, enc))):
                out[u.id] = (rec["char_errors"], rec["ref_chars"])
    return out


def delta_bytes(pset: ParamSet, trainable: dict[str, torch.Tensor]) -> int:
    """Size of the delta file `mtspeech adapt` writes for these tensors (torch.save, in memory)."""
    buf = io.BytesIO()
    torch.save({"set": pset.cfg.as_dict(), "tensors": {k: v.contiguous() for k, v in pset.delta(trainable).items()}},
               buf)
    return buf.tell()


def _finite(x: float) -> float | None:
    """x, or None where it is NaN (one seed has no spread; JSON has no NaN)."""
    return None if math.isnan(x) else x


def summarize(runs: list[dict], methods: list[str], ks: list[int], seeds: list[int], n_resamples: int) -> dict:
    """Per method and k: CER pooled over voices and seeds, its interval over voices, the paired
    difference to `none` and its interval, per-seed CERs and their t interval, time, delta size."""
    out: dict = {}
    for method in methods:
        for k in ks:
            rows = [r for r in runs if r["k"] == k]
            if not rows:
                continue
            errs, base, voices = [], [], []
            per_seed = defaultdict(lambda: [0, 0])
            for r in rows:
                for uid, (e, n) in r["scored"].items():
                    errs.append((r["errors"][method][uid], n))
                    base.append((e, n))
                    voices.append(r["voice"])
                    per_seed[r["seed"]][0] += r["errors"][method][uid]
                    per_seed[r["seed"]][1] += n
            boot = speaker_bootstrap(base, voices, errs, n_resamples=n_resamples)
            seed_cers = [per_seed[s][0] / per_seed[s][1] for s in seeds if per_seed[s][1]]
            spread = mean_std_ci(seed_cers)
            timed = [r["seconds"][method] for r in rows if method in r["seconds"]]
            sizes = [r["delta_bytes"][method] for r in rows if method in r["delta_bytes"]]
            out.setdefault(method, {})[str(k)] = {
                "cer": boot.rate_b, "ci_low": boot.ci_low_b, "ci_high": boot.ci_high_b,
                "delta_vs_none": boot.delta, "delta_ci_low": boot.delta_ci_low, "delta_ci_high": boot.delta_ci_high,
                "voices": boot.speakers, "runs": len(rows), "scored_utterances": len(errs),
                "per_seed_cer": dict(zip(map(str, seeds), seed_cers)),
                "seed_ci_low": _finite(spread.ci_low), "seed_ci_high": _finite(spread.ci_high),
                "adapt_seconds_median": statistics.median(timed) if timed else None,
                "delta_bytes": max(sizes) if sizes else None,
            }
    return out


@dataclass
class Voices:
    """A manifest's voices, loaded once: utterances per voice, waveforms by id, and the
    unadapted model's (character errors, reference characters) per utterance."""

    manifest: Path
    by_voice: dict[str, list[Utterance]]
    wavs: dict[str, torch.Tensor]
    base_errors: dict[str, tuple[int, int]]


def load_voices(model, manifest: Path, n_voices: int | None = None) -> Voices:
    """The first `n_voices` voices of `manifest` (all when None), in sorted speaker order."""
    by_voice: dict[str, list[Utterance]] = defaultdict(list)
    for u in read_manifest(manifest):
        if u.speaker is not None and u.text:
            by_voice[u.speaker].append(u)
    kept = {v: by_voice[v] for v in sorted(by_voice)[: n_voices or None]}
    rate = model.geometry.sample_rate
    wavs = {u.id: w for utts in kept.values() for u, w in zip(utts, inputs.load_waves(utts, rate))}
    base_errors = {uid: e for utts in kept.values() for uid, e in char_errors(model, utts, wavs).items()}
    return Voices(manifest, kept, wavs, base_errors)


def adapt_voices(model, pset: ParamSet, voices: Voices, ks: list[int], seeds: list[int], steps: int, lr: float,
                 meta_tensors: dict[str, torch.Tensor] | None = None,
                 adapter: tuple[SpeakerAdapter, ParamSet] | None = None,
                 methods: tuple[str, ...] = METHODS) -> tuple[list[dict], list[dict]]:
    """(runs, skipped): every voice x k x seed adapted by each of `methods` that can run
    (fine-tune; reptile from `meta_tensors`, speaker-embedding with `adapter` and the set it
    writes, when given) and scored on the voice's other utterances; a k that leaves a voice
    nothing to score is skipped. `model` stays the base."""
    scorer_model = copy.deepcopy(model)  # receives each adapted state
    rate = model.geometry.sample_rate
    runs, skipped = [], []
    for voice, utts in voices.by_voice.items():
        for k in ks:
            if k >= len(utts):
                skipped.append({"voice": voice, "k": k, "reason": f"the voice has {len(utts)} utterances: "
                                                                  "none would be left to score"})
                continue
            for seed in seeds:
                chosen = inputs.choose(utts, k, seed)
                chosen_ids = {u.id for u in chosen}
                scored = [u for u in utts if u.id not in chosen_ids]
                batches = inputs.batches(chosen, [voices.wavs[u.id] for u in chosen], model.tasks[model.asr_task],
                                         60.0, rate)
                record = {"voice": voice, "k": k, "seed": seed, "adapted_on": sorted(chosen_ids),
                          "scored": {u.id: voices.base_errors[u.id] for u in scored},
                          "errors": {"none": {u.id: voices.base_errors[u.id][0] for u in scored}},
                          "seconds": {}, "delta_bytes": {}, "loss": {}}
                starts = {"fine-tune": pset.initial(seed)} if "fine-tune" in methods else {}
                if meta_tensors is not None and "reptile" in methods:
                    starts["reptile"] = meta_tensors
                if adapter is not None and "speaker-embedding" in methods:
                    done = condition(model, adapter[0], adapter[1], [voices.wavs[u.id] for u in chosen])
                    scorer_model.load_state_dict(adapter[1].merged_state(done.values))
                    errors = char_errors(scorer_model, scored, voices.wavs)
                    record["errors"]["speaker-embedding"] = {uid: e for uid, (e, _) in errors.items()}
                    record["seconds"]["speaker-embedding"] = done.seconds
                    record["delta_bytes"]["speaker-embedding"] = delta_bytes(adapter[1], done.values)
                for method, start in starts.items():
                    result = fine_tune(model, pset, start, batches, steps, lr)
                    scorer_model.load_state_dict(pset.merged_state(result.trainable))
                    errors = char_errors(scorer_model, scored, voices.wavs)
                    record["errors"][method] = {uid: e for uid, (e, _) in errors.items()}
                    record["seconds"][method] = result.seconds
                    record["delta_bytes"][method] = delta_bytes(pset, result.trainable)
                    record["loss"][method] = [result.losses[0], result.losses[-1]]
                runs.append(record)
    return runs, skipped


def speaker_adapter(checkpoint: str, base_state: dict, model) -> tuple[tuple[SpeakerAdapter, ParamSet], dict]:
    """The adapter of `mtspeech train-speaker-adapter`'s output `checkpoint` with the set it
    writes, and what the JSON records of it; refused unless its base weights are --model's."""
    state = load_base(checkpoint)[0]
    if ADAPTER_KEY not in state:
        raise AdaptationError(f"--speaker-adapter {checkpoint} holds no speaker adapter (run `mtspeech "
                              "train-speaker-adapter` first)")
    if weights_fingerprint(state["model"]) != weights_fingerprint(base_state["model"]):
        raise AdaptationError(f"--speaker-adapter {checkpoint} was trained on other base weights than --model's")
    entry = state[ADAPTER_KEY]
    record = {"checkpoint": str(checkpoint), "config": entry["config"], "settings": entry.get("settings"),
              "steps_done": entry.get("steps_done"), "seconds": entry.get("seconds")}
    return load_adapter(state, model), record


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    cfg = set_config(args)
    state, model = load_base(args.model)
    pset = ParamSet(model, cfg)
    lr = DEFAULT_LR[cfg.kind] if args.lr is None else args.lr
    methods, not_available = ["none", "fine-tune"], {}
    meta_tensors, meta_settings, adapter, adapter_record = None, None, None, None
    if args.meta:
        meta = load_base(args.meta)[0].get(INIT_KEY)
        if meta is None or meta["set"] != cfg.as_dict():
            raise AdaptationError(f"--meta {args.meta} holds no Reptile start for {cfg.as_dict()}")
        meta_tensors, meta_settings = meta["tensors"], meta["settings"]
        methods.append("reptile")
    else:
        not_available["reptile"] = "no --meta checkpoint given (run `mtspeech meta-train` first)"
    if args.speaker_adapter:
        adapter, adapter_record = speaker_adapter(args.speaker_adapter, state, model)
        methods.append("speaker-embedding")
    else:
        not_available["speaker-embedding"] = ("no --speaker-adapter checkpoint given (run `mtspeech "
                                              "train-speaker-adapter` first)")
    if args.methods:
        missing = [m for m in args.methods if m not in methods]
        if missing:
            why = "; ".join(f"{m}: {not_available[m]}" for m in missing)
            raise AdaptationError(f"--methods {' '.join(missing)}: not available here ({why})")
        methods = ["none", *[m for m in methods[1:] if m in args.methods]]

    manifest = Path(args.manifest) if args.manifest else Path(args.data) / f"{args.split}.jsonl"
    t0 = time.perf_counter()
    voices = load_voices(model, manifest, args.voices)
    runs, skipped = adapt_voices(model, pset, voices, args.ks, args.seeds, args.steps, lr, meta_tensors, adapter,
                                 tuple(methods))
    return {
        "model": str(args.model), "manifest": str(manifest), "set": cfg.as_dict(), "steps": args.steps, "lr": lr,
        "ks": args.ks, "seeds": args.seeds, "threads": args.threads, "voices": sorted(voices.by_voice),
        "meta": {"checkpoint": str(args.meta), "settings": meta_settings} if args.meta else None,
        "speaker_adapter": adapter_record,
        "methods": methods, "not_available": not_available, "skipped": skipped,
        "results": summarize(runs, methods, args.ks, args.seeds, args.resamples),
        "runs": runs, "seconds": time.perf_counter() - t0,
    }


def render(result: dict) -> str:
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    where = f"on {result['manifest']} ({len(result['voices'])} voices, seeds {result['seeds']}"
    if "fine-tune" in result["methods"]:
        head = (f"adaptation of {result['set']['kind']} {where}, {result['steps']} Adam steps of {result['lr']:g}, "
                f"{result['threads']} threads)")
    else:
        head = f"adaptation {where}, {result['threads']} threads)"
    adapter = result.get("speaker_adapter")
    if adapter:
        layers = adapter["config"]["layers"]
        blocks = "all" if layers is None else f"the top {layers}"
        trained = "" if adapter.get("seconds") is None else f" in {adapter['seconds']:.0f} s"
        head += (f"\nspeaker-embedding: the adapter of {adapter['checkpoint']} ({adapter['steps_done']} training "
                 f"steps{trained}; it sets the LayerNorms of {blocks} blocks on the ASR path)")
    lines = [head, "",
             "| method | k | CER [voices] | Δ vs none [voices] | seed interval | s / adaptation | delta bytes |",
             "|---|---|---|---|---|---|---|"]
    for method, by_k in result["results"].items():
        for k, r in by_k.items():
            lines.append(f"| {method} | {k} | {fmt(r['cer'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] | "
                         f"{fmt(r['delta_vs_none'])} [{fmt(r['delta_ci_low'])}, {fmt(r['delta_ci_high'])}] | "
                         f"[{fmt(r['seed_ci_low'])}, {fmt(r['seed_ci_high'])}] | {fmt(r['adapt_seconds_median'])} | "
                         f"{r['delta_bytes'] or '-'} |")
    if result["skipped"]:
        lines.append(f"\nskipped (nothing left to score): {len(result['skipped'])} voice x k pairs, "
                     f"k = {sorted({s['k'] for s in result['skipped']})}")
    for method, why in result["not_available"].items():
        lines.append(f"\n{method}: not available: {why}")
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="trained checkpoint (final.pt)")
    ap.add_argument("--meta", default=None, help="`mtspeech meta-train`'s output for the same set (the reptile rows)")
    ap.add_argument("--speaker-adapter", default=None,
                    help="`mtspeech train-speaker-adapter`'s output for --model (the speaker-embedding rows)")
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS[1:],
                    help="only these methods beside `none` (default: every one whose checkpoint is given)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", help="manifest folder (data/synthetic); with --split")
    where.add_argument("--manifest", help="a manifest of the voices instead")
    ap.add_argument("--split", default="test-voices")
    add_set_arguments(ap)
    ap.add_argument("--lr", type=float, default=None, help="default: `mtspeech adapt`'s for the set")
    add_run_arguments(ap, seeds=[0, 1, 2])


def add_run_arguments(ap: argparse.ArgumentParser, seeds: list[int]) -> None:
    """What every adaptation measurement takes (this script and adaptation_tuning.py): the k's, the
    selection seeds, the Adam steps, how many voices, threads, resamples, and the JSON output."""
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--seeds", type=int, nargs="+", default=seeds, help="selection seeds of the k utterances")
    ap.add_argument("--steps", type=int, default=20, help="Adam steps (`mtspeech adapt`'s default)")
    ap.add_argument("--voices", type=int, default=None, help="the first N voices only (a quick look)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the issue's 2 cores)")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples over voices")
    ap.add_argument("--out", default=None, help="JSON output")


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv, usage_errors=(AdaptationError,))


if __name__ == "__main__":
    main()
