"""Synthesis speed of the demo corpus per engine, and the full corpus's time from it.

    python benchmarks/synth_speed.py --per-kind 8 --out docs/results/synth-speed/speed.json

Takes the first `--per-kind` utterances of each kind (engine, natural or WORLD-converted
voice) from the default corpus's own plan (`mtspeech synth`'s, seed `--seed`), renders
each one alone on one core exactly as `mtspeech synth` does (`synth._work`: engine, trim,
conversion, placement, noise, FLAC), and times it. Per kind: wall seconds per second of
audio (real-time factor) and per word. The full corpus's time is then estimated as the sum,
over every planned utterance of the corpus and of its train-voices and test-voices splits,
of its words times its kind's seconds per word, divided by `--cores` (`synth` renders
utterances in parallel, one process per core, with no shared state).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import emit  # noqa: E402

from mtspeech.data.new_voices import plan_train_voices, plan_voices  # noqa: E402
from mtspeech.data.sentences import sentence_pool  # noqa: E402
from mtspeech.data.synth import SPLITS, SynthConfig, _Job, _work, plan_corpus  # noqa: E402


def kind(speaker) -> str:
    return speaker.engine + ("+world" if speaker.conversion else "")


def run(args: argparse.Namespace) -> dict:
    cfg = SynthConfig(seed=args.seed)
    _, plan, sentences = plan_corpus(cfg)
    items = [(split, *item) for split in SPLITS for item in plan[split]]
    extra = plan_voices(cfg)[1] + plan_train_voices(cfg)[1]  # run.sh's --voices-only, --train-voices-only
    chosen: dict[str, list] = defaultdict(list)
    for index, (split, utt_id, speaker, text) in enumerate(items):
        if len(chosen[kind(speaker)]) < args.per_kind:
            chosen[kind(speaker)].append((index, split, utt_id, speaker, text))
    kinds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, picked in sorted(chosen.items()):
            wall = audio = words = 0.0
            for index, split, utt_id, speaker, text in picked:
                job = _Job(index, split, utt_id, os.path.join(tmp, f"{utt_id}.flac"), text, speaker, cfg.seed,
                           cfg.noise_snr_db)
                start = time.perf_counter()
                _, seconds, _ = _work(job)
                wall += time.perf_counter() - start
                audio += seconds
                words += len(text.split())
            kinds[name] = {"utterances": len(picked), "audio_s": round(audio, 2), "wall_s": round(wall, 2),
                           "real_time_factor": round(wall / audio, 4), "wall_s_per_word": round(wall / words, 4)}
    planned = defaultdict(lambda: {"utterances": 0, "words": 0})
    for _, _, speaker, text in items + [(None, *item) for item in extra]:
        planned[kind(speaker)]["utterances"] += 1
        planned[kind(speaker)]["words"] += len(text.split())
    one_core_s = sum(p["words"] * kinds[k]["wall_s_per_word"] for k, p in planned.items())
    return {"seed": args.seed, "per_kind": args.per_kind, "cores": args.cores, "hours": cfg.hours,
            "kinds": kinds, "full_corpus": {"planned": dict(sorted(planned.items())),
                                            "sentence_pool": len(sentence_pool(cfg.min_words, cfg.max_words,
                                                                               cfg.vocab_words)),
                                            "distinct_sentences": sentences | {
                                                "train-voices": len({t for _, _, t in plan_train_voices(cfg)[1]})},
                                            "estimated_minutes_one_core": round(one_core_s / 60, 1),
                                            "estimated_minutes": round(one_core_s / 60 / args.cores, 1)}}


def render(result: dict) -> str:
    lines = [f"{'kind':<16} {'utts':>5} {'audio s':>8} {'wall s':>7} {'RTF':>7} {'s/word':>7}"]
    for name, k in result["kinds"].items():
        lines.append(f"{name:<16} {k['utterances']:>5} {k['audio_s']:>8} {k['wall_s']:>7} "
                     f"{k['real_time_factor']:>7} {k['wall_s_per_word']:>7}")
    full = result["full_corpus"]
    lines.append(f"sentence pool {full['sentence_pool']}; distinct sentences read: " +
                 ", ".join(f"{k} {v}" for k, v in full["distinct_sentences"].items()))
    lines.append(f"full corpus ({result['hours']} h + test-voices + train-voices): ~{full['estimated_minutes']} min "
                 f"on {result['cores']} cores ({full['estimated_minutes_one_core']} min on one)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=8, help="utterances timed per kind (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cores", type=int, default=2, help="cores the estimate assumes (default %(default)s)")
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args(argv)
    return emit(run(args), render, args.out)


if __name__ == "__main__":
    main()
