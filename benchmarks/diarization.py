"""Diarization of the live speaker turns: DER and change latency, against a Resemblyzer peer.

    python benchmarks/diarization.py --model exp/synthetic/all/final.pt --data data/synthetic \\
        --pyannote-cache ~/.cache/mtspeech-bench --out diarization.json

Conversations (`benchmarks/_diarization_conversations.py`): `--tune-conversations` among the
voices of `--tune-splits` (dev: training's speakers reading held-out sentences), where the two
thresholds are chosen; `--conversations` among `--test-splits` (test-voices and test-unseen:
voices training never heard), where everything is reported; `--acceptance` two-voice, two-turn
conversations of the held-out voices; and the real 30 s two-person sample of the pyannote.audio
wheel. Each synthetic conversation: 2 to 4 voices, at least 45 s, turns of 1 to 10 s; each turn
after the first starts after a pause of 0.2 to 1.5 s, or (with probability 0.2) 0.2 to 1 s
before the previous one ends (`ConversationShape`).

How a conversation is decoded: in-process through the server's code path, `load_recognizer`
(default torch backend, greedy decoder) and `StreamingRecognizer` streams made as a WebSocket
`start` with `speakers: true` makes them, fed 0.1 s at a time; the stream's `SpeakerTracker`
(`mtspeech/streaming/speakers.py`) also records what the recognizer fed it (per chunk the
speaker head's frames and the VAD's speech mask; every pause). Replaying that record into fresh
trackers gives the other settings without decoding again; a replay at the served settings must
give exactly the served `speaker_change` events (checked for every conversation).

Pipelines, which differ only in the window embedding: `head` pools the speaker head's frames of
a window (`SpeakerFrames.embed`, as served); `resemblyzer` embeds the audio of the same window's
encoder frames (frame k: samples [k, k+1) x 640 at 16 kHz) with Resemblyzer's `VoiceEncoder`
over that audio's mel frames (volume normalised as its `preprocess_wav` does; no padding to its
1.6 s training partials). Same windows, same VAD frames, same pauses, same clustering code.

Settings: `change_distance` x `new_speaker_distance` over `--grid`, x `gap_frames` over `--gaps`
(a window ends at that many non-speech frames), x `new_speaker_frames` over `--new-speaker-frames`
(far speech a voice needs before it founds a speaker), x `switch_margin` over `--switch-margins`
(how decisive less than `change_frames` of far speech must be for a pause to settle a switch),
x `backdate_windows` over `--backdate-windows` (how many windows before a change's first far
window may join the new turn when they sound more like its voice), x `first_speaker_frames` over
`--first-speaker-frames` (speech the stream's first voice needs before a pause or a window unlike
it may found it; 'none': any window may); each pipeline's setting is
chosen on dev voices only: among the settings whose DER over the tuning conversations is within
`--der-slack` (one point) of the lowest, the most two-voice, two-turn dev conversations
(`--tune-acceptance`) passing the acceptance below, then the lowest DER (the served defaults,
chosen the same way for the head, are reported too). Without the slack, one more two-voice pass
could be bought by merging voices, at a much higher DER over the 2-4-voice conversations (the
JSON's `tuning` rows show it). The pipelines' grids are replayed in parallel, one forked process
each; `cpu_s` counts them too.

The hypothesis: every speech frame (VAD, as the tracker saw it) labelled with the speaker of the
`speaker_change` event holding it (a frame before the first event: the first speaker), which is
what a client can draw from the events. DER: `pyannote.metrics` `DiarizationErrorRate(collar=0.25,
skip_overlap=False)` over the whole recording (UEM = [0, length]); overlapped speech counts, and
a single-label hypothesis misses at least one voice there. On the pyannote sample it is also
given with the reference's speech in place of the VAD's (`with_reference_speech`), to separate
the embeddings from the VAD. Rates pool seconds over conversations;
intervals are 95 % percentile bootstraps over conversations (1000 resamples, seeded).

Change latency: each true change (the floor passing to another voice: a turn's start) is matched
one to one with the nearest `speaker_change` event (the first turn's excluded) whose `start` lies
within `--tolerance` (1 s); found = matched share; latency = the event's `detected_at` minus the
true change, in stream seconds (audio decoded, not wall time: live, a chunk's audio also waits for
the chunk to fill, 0.32 s at the default 8 frames, plus decoding); unmatched events are false changes.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

from _cli import add_model_arguments, run_main
from _diarization_conversations import (PYANNOTE_WHEEL, ConversationShape, build_conversations,
                                        pyannote_sample, pyannote_wheel)
from _diarization_recordings import load_or_record, recording_key
from _diarization_scoring import (DEFAULT, Recording, choose, replay, score, summarise, turn_config,
                                  two_labels_in_time, with_reference_speech)

GRID = "0.1,0.15,0.2,0.3,0.4,0.5,0.6,0.7"  # Resemblyzer's distances run lower than the head's
GAPS = "none,3,6"  # SpeakerTurnConfig.gap_frames: off, 0.12 s, 0.24 s
NEW_SPEAKER_FRAMES = "24,32,48"  # SpeakerTurnConfig.new_speaker_frames: 0.96, 1.28, 1.92 s of speech
SWITCH_MARGINS = "none,0.1,0.2,0.3"  # SpeakerTurnConfig.switch_margin ('none': a pause settles any far window)
BACKDATE_WINDOWS = "0,4"  # SpeakerTurnConfig.backdate_windows: off, up to 4 windows (2.56 s) back
# SpeakerTurnConfig.first_speaker_frames: off only. 'none,16' (off, one whole window) doubles the grid and
# was rejected on dev (docs/results/diarization/dev-first-speaker-frames.json), so the default run leaves it out.
FIRST_SPEAKER_FRAMES = "none"
DER_SLACK = 0.01  # a setting is chosen among those within one point of the lowest dev DER


def add_arguments(ap) -> None:
    add_model_arguments(ap)
    ap.add_argument("--data", required=True, help="corpus folder holding the split manifests (SPLIT.jsonl)")
    ap.add_argument("--tune-splits", default="dev", help="comma-separated: voices the thresholds are chosen on")
    ap.add_argument("--test-splits", default="test-voices,test-unseen", help="comma-separated: held-out voices")
    ap.add_argument("--tune-conversations", type=int, default=20)
    ap.add_argument("--conversations", type=int, default=30)
    ap.add_argument("--acceptance", type=int, default=10, help="two-voice, two-turn held-out conversations")
    ap.add_argument("--tune-acceptance", type=int, default=10,
                    help="two-voice, two-turn conversations of the tuning voices (the acceptance, seen on dev)")
    ap.add_argument("--seconds", type=float, default=45.0, help="a synthetic conversation lasts at least this")
    ap.add_argument("--speakers", default="2,4", help="voices per conversation: low,high")
    ap.add_argument("--grid", default=GRID, help="values tried for both thresholds")
    ap.add_argument("--gaps", default=GAPS, help="gap_frames values tried ('none': off)")
    ap.add_argument("--new-speaker-frames", default=NEW_SPEAKER_FRAMES, help="new_speaker_frames values tried")
    ap.add_argument("--switch-margins", default=SWITCH_MARGINS, help="switch_margin values tried ('none': off)")
    ap.add_argument("--backdate-windows", default=BACKDATE_WINDOWS, help="backdate_windows values tried (0: off)")
    ap.add_argument("--first-speaker-frames", default=FIRST_SPEAKER_FRAMES,
                    help="first_speaker_frames values tried ('none': off), off first so a tie keeps it off")
    ap.add_argument("--der-slack", type=float, default=DER_SLACK,
                    help="the acceptance picks among settings whose dev DER is within this of the lowest (a fraction)")
    ap.add_argument("--tolerance", type=float, default=1.0, help="seconds between a true change and its event")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pyannote-cache", default=str(Path.home() / ".cache" / "mtspeech-bench"),
                    help="folder for the pyannote.audio wheel (downloaded there if absent)")
    ap.add_argument("--no-pyannote-sample", action="store_true", help="leave the real sample out (offline)")
    ap.add_argument("--no-peer", action="store_true", help="leave Resemblyzer out")
    ap.add_argument("--recordings", default=None,
                    help="folder where what the tracker was fed is saved and read back, so a later run with other "
                         "settings decodes nothing (keep it out of git: e.g. exp/diarization-recordings)")
    ap.add_argument("--tune-only", action="store_true",
                    help="choose the settings on the tuning voices and stop: no held-out conversation is built or "
                         "scored (a rule that dev does not choose is never measured on held-out voices)")
    ap.add_argument("--grid-keep", type=float, default=None, metavar="DER",
                    help="keep in the JSON only the dev settings within DER (e.g. 0.05) of the lowest dev DER, and "
                         "the served one (the choice reads only those within --der-slack); it records how many were "
                         "searched and every axis's values")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", default=None)


def _manifests(data: str, splits: str) -> list[Path]:
    paths = [Path(data) / f"{s}.jsonl" for s in splits.split(",") if s]
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"{p}: no such manifest (--data names the folder of SPLIT.jsonl files)")
    return paths


def run(args) -> dict:
    import tempfile

    import torch

    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.decoding.loader import load_recognizer

    torch.set_num_threads(args.threads)
    cpu0 = time.process_time() + _children_cpu_s()
    model = args.model
    if args.random_model:
        from _tiny_model import build_random_checkpoint

        model = build_random_checkpoint(tempfile.mkdtemp() + "/random.pt", speaker=True)
    rec = load_recognizer(model, DecodingConfig(decoder="greedy"))
    if rec.speaker is None:
        raise SystemExit(f"{model}: the model has no speaker-embedding task; nothing to diarize")
    rate = rec.geometry.sample_rate
    lo, hi = (int(x) for x in args.speakers.split(","))
    shape = ConversationShape(speakers=(lo, hi), min_seconds=args.seconds)
    tests, tunes = _manifests(args.data, args.test_splits), _manifests(args.data, args.tune_splits)
    two_turns = ConversationShape(speakers=(2, 2), turn_s=(3.0, 8.0), overlap_prob=0.0, turns=2)
    sets = {
        "tune": build_conversations(tunes, args.tune_conversations, args.seed, rate, shape, "tune-"),
        "tune-acceptance": build_conversations(tunes, args.tune_acceptance, args.seed + 3, rate, two_turns,
                                               "tune-accept-"),
    }
    if not args.tune_only:
        sets["test"] = build_conversations(tests, args.conversations, args.seed + 1, rate, shape, "test-")
        sets["acceptance"] = build_conversations(tests, args.acceptance, args.seed + 2, rate, two_turns, "accept-")
    if not args.no_pyannote_sample and not args.tune_only:
        sets["pyannote-sample"] = [pyannote_sample(pyannote_wheel(args.pyannote_cache), rate)]
    peer = None
    if not args.no_peer:
        from resemblyzer import VoiceEncoder

        peer = VoiceEncoder("cpu", verbose=False)
    key = recording_key(model, data=str(Path(args.data).resolve()), tune_splits=args.tune_splits,
                        test_splits=args.test_splits, tune_conversations=args.tune_conversations,
                        conversations=args.conversations, acceptance=args.acceptance,
                        tune_acceptance=args.tune_acceptance, seconds=args.seconds,
                        speakers=args.speakers, seed=args.seed, sample_rate=rate)
    recordings: dict[str, list[Recording]] = {k: load_or_record(args.recordings, k, key, v, rec, peer)
                                              for k, v in sets.items()}
    grid = [float(x) for x in args.grid.split(",")]
    pipelines = ["head"] + ([] if peer is None else ["resemblyzer"])
    gaps = [None if g == "none" else int(g) for g in args.gaps.split(",")]
    frames = [int(x) for x in args.new_speaker_frames.split(",")]
    margins = [None if m == "none" else float(m) for m in args.switch_margins.split(",")]
    backdates = [int(b) for b in args.backdate_windows.split(",")]
    firsts = [None if f == "none" else int(f) for f in args.first_speaker_frames.split(",")]
    tuned = _in_parallel([(choose, (recordings["tune"], recordings["tune-acceptance"], p, grid, gaps, frames,
                                    args.tolerance, margins, backdates, args.der_slack, firsts)) for p in pipelines])
    tuning = dict(zip(pipelines, tuned))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or None
    run_info = {"benchmark": "diarization", "commit": commit,
                "model": "random-tiny" if args.random_model else str(model), "backend": rec.encoder_step.name,
                "chunk_frames": rec.config.chunk_frames, "window_frames": DEFAULT.window_frames,
                "frame_shift_s": rec.frame_shift_s, "seed": args.seed, "tune_splits": args.tune_splits,
                "test_splits": args.test_splits, "tolerance_s": args.tolerance, "collar_s": 0.25, "skip_overlap": False,
                "conversations": {k: len(v) for k, v in sets.items()},
                "audio_s": {k: round(sum(c.seconds for c in v), 1) for k, v in sets.items()}}
    versions = {m: version(m) for m in ("pyannote.metrics", "torch") + (("resemblyzer",) if peer else ())}
    served = DEFAULT
    setting = [served.change_distance, served.new_speaker_distance, served.gap_frames, served.new_speaker_frames,
               served.switch_margin, served.backdate_windows, served.first_speaker_frames]
    kept = tuning if args.grid_keep is None else {p: trim_grid(t, args.grid_keep, setting) for p, t in tuning.items()}
    if args.tune_only:
        return {**run_info, "tune_only": True, "tuning": kept, "versions": versions,
                "served_setting": setting,
                "cpu_s": round(time.process_time() + _children_cpu_s() - cpu0, 1), "cpus": os.cpu_count()}
    settings = {"head (served defaults)": ("head", DEFAULT)}
    settings.update({f"{p} (tuned)": (p, turn_config(*tuning[p]["chosen"])) for p in pipelines})
    results = {}
    for name, (pipeline, cfg) in settings.items():
        scored = {k: [score(r, replay(r, pipeline, cfg), args.tolerance) for r in v] for k, v in recordings.items()
                  if not k.startswith("tune")}
        results[name] = {"pipeline": pipeline, "change_distance": cfg.change_distance,
                         "new_speaker_distance": cfg.new_speaker_distance, "gap_frames": cfg.gap_frames,
                         "new_speaker_frames": cfg.new_speaker_frames, "switch_margin": cfg.switch_margin,
                         "backdate_windows": cfg.backdate_windows, "first_speaker_frames": cfg.first_speaker_frames,
                         "test": summarise(scored["test"], seed=args.seed),
                         "acceptance": two_labels_in_time(scored["acceptance"]),
                         "acceptance_per_conversation": scored["acceptance"],
                         "per_conversation": scored["test"]}
        if "pyannote-sample" in scored:
            results[name]["pyannote_sample"] = scored["pyannote-sample"][0]
            oracle = with_reference_speech(recordings["pyannote-sample"][0])
            results[name]["pyannote_sample_reference_speech"] = score(oracle, replay(oracle, pipeline, cfg),
                                                                      args.tolerance)
    if peer is not None:
        from mtspeech.evaluation.stats import speaker_bootstrap

        a, b = (results[f"{p} (tuned)"]["per_conversation"] for p in pipelines)
        boot = speaker_bootstrap([(s["error_ms"], s["total_ms"]) for s in a], [s["id"] for s in a],
                                 [(s["error_ms"], s["total_ms"]) for s in b], seed=args.seed)
        delta = {"der_resemblyzer_minus_head": boot.delta, "ci": [boot.delta_ci_low, boot.delta_ci_high]}
    return {**run_info, "test_speakers_per_conversation": [len(c.speakers) for c in sets["test"]],
            "test_overlapped_turns": sum(b.start < a.end for c in sets["test"] for a, b in zip(c.turns, c.turns[1:])),
            "test_turns": sum(len(c.turns) for c in sets["test"]),
            "tuning": kept, "results": results, "peer_delta": delta if peer is not None else None,
            "versions": versions,
            "pyannote_wheel": None if args.no_pyannote_sample else PYANNOTE_WHEEL,
            "cpu_s": round(time.process_time() + _children_cpu_s() - cpu0, 1), "cpus": os.cpu_count()}


_JOBS: list = []  # what the forked tuning workers run: recordings hold closures, which do not pickle


def _run_job(i: int):
    fn, fn_args = _JOBS[i]
    return fn(*fn_args)


def _in_parallel(jobs: list[tuple]) -> list:
    """[fn(*args) for fn, args in jobs], each in a forked process of its own where fork exists (the
    pipelines' grids are independent, and the grid is the benchmark's cost), else one by one."""
    if len(jobs) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(*fn_args) for fn, fn_args in jobs]
    _JOBS[:] = jobs
    try:
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            return pool.map(_run_job, range(len(jobs)))
    finally:
        _JOBS.clear()


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the tuning workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def render(r: dict) -> str:
    if r.get("tune_only"):
        return _render_tune_only(r)
    n = r["conversations"]
    margins = any("switch_margin" in x for x in r["results"].values())  # results before the margin lack it
    backdate = any("backdate_windows" in x for x in r["results"].values())  # and before backdating
    first = any("first_speaker_frames" in x for x in r["results"].values())  # and before the first-voice rule
    lines = [f"diarization, model {r['model']}, commit {r['commit']}, {r['backend']}, chunks of {r['chunk_frames']} "
             f"frames, windows of {r['window_frames']} speech frames, seed {r['seed']}",
             f"  settings chosen on {n['tune-acceptance']} two-voice and {n['tune']} conversations of "
             f"{r['tune_splits']} voices; reported on {n['test']} conversations of held-out voices ({r['test_splits']}; {r['audio_s']['test']:.0f} s, "
             f"{r['test_turns']} turns, {r['test_overlapped_turns']} overlapping)",
             f"  DER: pyannote.metrics, collar {r['collar_s']} s, overlap counted; change found: an event within "
             f"{r['tolerance_s']:g} s of the true change; 95 % bootstrap over conversations", "",
             "| pipeline | change / new-speaker distance, gap frames, new-speaker frames"
             + (", switch margin" if margins else "") + (", backdate windows" if backdate else "")
             + (", first-speaker frames" if first else "") + " | DER % [95 % CI] "
             "| miss / FA / confusion % | changes found % [CI] | latency median s [CI] | p90 s | false changes / min | "
             "2-voice acceptance | pyannote sample DER % (miss / FA / confusion) | the same, reference speech |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, x in r["results"].items():
        t, acc = x["test"], x["acceptance"]
        sample = x.get("pyannote_sample")
        lines.append(
            f"| {name} | {x['change_distance']:g} / {x['new_speaker_distance']:g}, {x.get('gap_frames') or 'off'}, "
            f"{x['new_speaker_frames']}" + (f", {_margin(x.get('switch_margin'))}" if margins else "")
            + (f", {x['backdate_windows']}" if backdate else "")
            + (f", {x.get('first_speaker_frames') or 'off'}" if first else "")
            + f" | {_pct(t['der'])} "
            f"[{_pct(t['der_ci'][0])}, {_pct(t['der_ci'][1])}] | {_pct(t['missed'])} / {_pct(t['false_alarm'])} / "
            f"{_pct(t['confusion'])} | {_pct(t['found'])} [{_pct(t['found_ci'][0])}, {_pct(t['found_ci'][1])}] | "
            f"{_s(t['latency_median_s'])} [{_s(t['latency_ci'][0])}, {_s(t['latency_ci'][1])}] | "
            f"{_s(t['latency_p90_s'])} | {t['false_changes_per_min']:.2f} | {acc['passed']} of {acc['conversations']} "
            f"| {_sample(sample)} | {_sample(x.get('pyannote_sample_reference_speech'))} |")
    if r.get("peer_delta"):
        d = r["peer_delta"]
        lines += ["", f"  DER resemblyzer - head (tuned, paired over the same conversations): "
                      f"{100 * d['der_resemblyzer_minus_head']:+.1f} points [{100 * d['ci'][0]:+.1f}, "
                      f"{100 * d['ci'][1]:+.1f}]"]
    lines.append("  2-voice acceptance: conversations (two held-out voices, one turn each) labelled with exactly "
                 "two speakers whose change event starts within the tolerance of the true turn")
    for name, x in r["results"].items():
        per = x.get("acceptance_per_conversation", [])
        extra = sum(s["labels"] > 2 for s in per)
        missed = sum(s["found"] < s["true_changes"] for s in per)
        lines.append(f"    {name}: {extra} with more than two labels, {missed} with the change not found")
    # the served setting as the run recorded it (the code's defaults may have moved on since)
    x = r["results"]["head (served defaults)"]
    default = [x["change_distance"], x["new_speaker_distance"], x["gap_frames"], x["new_speaker_frames"]] \
        + ([x["switch_margin"]] if margins else []) + ([x["backdate_windows"]] if backdate else []) \
        + ([x["first_speaker_frames"]] if first else [])
    return "\n".join(lines + _dev_lines(r["tuning"], default))


def trim_grid(t: dict, keep: float, served: list) -> dict:
    """A pipeline's tuning with only the rows within `keep` of its lowest DER (and the served
    setting's): what the choice and `_render_tune_only` read, in a JSON a fraction of the size."""
    floor = min(row[-2] for row in t["grid"])
    axes = [list(dict.fromkeys(row[i] for row in t["grid"])) for i in range(len(t["grid"][0]) - 2)]
    kept = [row for row in t["grid"] if row[-2] <= floor + keep + 1e-9 or row[:-2] == served]
    return {**t, "grid": kept, "settings_searched": len(t["grid"]), "axis_values": axes, "grid_kept_within": keep}


def _dev_lines(tuning: dict, default: list) -> list[str]:
    lines = []
    for pipeline, t in tuning.items():  # a row: the setting, then [DER, passed] (fewer axes in older runs)
        served = [row[-2:] for row in t["grid"] if row[:-2] == default]
        slack = "" if t.get("der_slack") is None else f" (among DER within {_pct(t['der_slack'])} points of the lowest)"
        lines.append(f"  dev, {pipeline}: chosen {t['acceptance_passed']} of {t['acceptance_conversations']} two-voice "
                     f"passed, DER {_pct(t['der'])} %{slack}" + (f"; at the served defaults {served[0][1]} passed, DER "
                                                          f"{_pct(served[0][0])} %" if served else "")
                     + f" ({t.get('settings_searched', len(t['grid']))} settings)")
    return lines


AXES = ("change distance", "new-speaker distance", "gap frames", "new-speaker frames", "switch margin",
        "backdate windows", "first-speaker frames")  # a tuning row's settings, in order


def _render_tune_only(r: dict) -> str:
    """A run that stopped after the dev choice (`--tune-only`): the choice, and for each value of
    each axis tried with more than one, the setting the same rule picks among the rows holding
    that value (within the slack of the lowest DER over all rows): what each rule did on dev."""
    n = r["conversations"]
    lines = [f"diarization, settings chosen on dev only (no held-out conversation scored), model {r['model']}, "
             f"commit {r['commit']}, {r['backend']}, chunks of {r['chunk_frames']} frames, windows of "
             f"{r['window_frames']} speech frames, seed {r['seed']}",
             f"  {n['tune-acceptance']} two-voice and {n['tune']} conversations of {r['tune_splits']} voices; "
             f"a setting: {', '.join(AXES)}"]
    lines += _dev_lines(r["tuning"], r["served_setting"])
    for pipeline, t in r["tuning"].items():
        floor = min(row[-2] for row in t["grid"])
        for axis, name in enumerate(AXES[2:], start=2):  # the rules; the two distances are a scale
            values = t["axis_values"][axis] if "axis_values" in t else list(dict.fromkeys(row[axis] for row in t["grid"]))
            if len(values) < 2:
                continue
            for v in values:
                rows = [row for row in t["grid"] if row[axis] == v and row[-2] <= floor + (t["der_slack"] or 0) + 1e-9]
                best = min(rows, key=lambda row: (-row[-1], row[-2])) if rows else None
                lines.append(f"    {pipeline}, {name} {_setting(v)}: " + (
                    "no setting within the slack" if best is None else
                    f"{best[-1]} passed, DER {_pct(best[-2])} % at {', '.join(_setting(x) for x in best[:-2])}"))
    return "\n".join(lines)


def _setting(x) -> str:
    return "off" if x is None else f"{x:g}"


def _margin(m: float | None) -> str:
    return "off" if m is None else f"{m:g}"


def _sample(s: dict | None) -> str:
    if s is None:
        return "-"
    part = lambda k: _pct(s[k] / s["total_ms"])  # noqa: E731
    return f"{_pct(s['der'])} ({part('missed_ms')} / {part('false_alarm_ms')} / {part('confusion_ms')})"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> dict:
    return run_main(__doc__, add_arguments, run, render, argv, indent=None)  # ~40 per-conversation records


if __name__ == "__main__":
    main()
