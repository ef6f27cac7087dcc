"""The rehearsal's training side (part of `rehearsal.py`): epoch planning by our sampler and
lhotse's, the data loader's audio rate per worker, and the Trainer loop against the bare
model step and SpeechBrain's `Brain` on the same batches.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing as mp
import tempfile
import time

import torch

from mtspeech.data.geometry import SAMPLE_RATE
from mtspeech.data.sampler import DurationBatchSampler


# ------------------------------------------------------------------ memory of a forked child

def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))


def _child(fn, args, conn) -> None:
    start_kb = _status_kb("VmRSS")
    try:
        result = fn(*args)
    except Exception as e:  # noqa: BLE001 - reported, not raised, across the fork
        result = {"error": f"{type(e).__name__}: {e}"}
    result["rss_growth_mb"] = round((_status_kb("VmHWM") - start_kb) / 1024, 1)
    conn.send(result)


def in_fork(fn, *args) -> dict:
    """Run fn(*args) -> dict in a forked child; adds its peak RSS growth over its start."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(fn, args, child))
    p.start()
    result = parent.recv()
    p.join()
    return result


# ------------------------------------------------------------------ epoch planning

def plan_ours(durations: list[float], max_batch_seconds: float) -> dict:
    """Build our sampler and plan (pack) one epoch."""
    t0 = time.perf_counter()
    s = DurationBatchSampler(durations, max_batch_seconds, shuffle=True, seed=0)
    batches = s.batches(0)
    return {"plan_s": round(time.perf_counter() - t0, 2), "batches": len(batches),
            "utterances": sum(map(len, batches))}


def plan_lhotse(durations: list[float], audio: list[str], max_batch_seconds: float) -> dict:
    """Build a CutSet of the same utterances, then iterate one epoch of DynamicBucketingSampler."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
    from lhotse.audio import AudioSource
    from lhotse.dataset import DynamicBucketingSampler

    t0 = time.perf_counter()
    cuts = []
    for i, (d, path) in enumerate(zip(durations, audio)):
        rid = f"u{i}"
        rec = Recording(id=rid, sources=[AudioSource(type="file", channels=[0], source=path)],
                        sampling_rate=SAMPLE_RATE, num_samples=round(d * SAMPLE_RATE),
                        duration=round(d * SAMPLE_RATE) / SAMPLE_RATE)
        cuts.append(MonoCut(id=rid, start=0.0, duration=rec.duration, channel=0, recording=rec,
                            supervisions=[SupervisionSegment(id=rid, recording_id=rid, start=0.0,
                                                             duration=rec.duration)]))
    cutset = CutSet.from_cuts(cuts)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampler = DynamicBucketingSampler(cutset, max_duration=max_batch_seconds, num_buckets=16,
                                      shuffle=True, seed=0)
    n_batches = n_cuts = 0
    for batch in sampler:
        n_batches += 1
        n_cuts += len(batch)
    return {"cutset_build_s": round(build_s, 2), "plan_s": round(time.perf_counter() - t0, 2),
            "batches": n_batches, "utterances": n_cuts}


def check_resume(durations: list[float], max_batch_seconds: float) -> dict:
    """Hand out a third of epoch 3, save state, 'kill', restore into a new sampler: the
    remaining batches must equal those the first sampler goes on to yield."""
    a = DurationBatchSampler(durations, max_batch_seconds, shuffle=True, seed=0)
    a.set_epoch(3)
    it = iter(a)
    k = len(a) // 3
    consumed = list(itertools.islice(it, k))
    state = a.state_dict()
    rest_a = list(it)
    b = DurationBatchSampler(durations, max_batch_seconds, shuffle=True, seed=0)
    b.load_state_dict(state)
    rest_b = list(b)
    seen = {i for batch in consumed + rest_b for i in batch}
    return {"batches": len(a), "resumed_at": k, "remaining_identical": rest_a == rest_b,
            "epoch_covers_all_once": len(seen) == len(durations) == sum(map(len, consumed + rest_b))}


# ------------------------------------------------------------------ loader and trainer

def make_trainer(config: str, train_manifest: str, exp_dir: str, *overrides: str):
    from mtspeech.experiment import load_experiment
    from mtspeech.train import Trainer

    exp = load_experiment(config, [f"exp_dir={exp_dir}", f"data.train={train_manifest}", "data.dev=null",
                                   "train.average_best=0", "train.epochs=1", *overrides])  # later wins
    return Trainer(exp)


def loader_rates(trainer, workers: list[int], speed_perturb: tuple[float, ...] | None,
                 min_seconds: float = 8.0) -> list[dict]:
    """Drain whole epochs of the trainer's own loader (decode + speed perturbation + collate)
    per worker count; then the model's features + SpecAugment on those batches (which run
    inside the model, i.e. on the training device, not in the loader)."""
    exp0 = trainer.exp
    rows = []
    for w in workers:
        trainer.exp = dataclasses.replace(exp0, data=dataclasses.replace(
            exp0.data, num_workers=w, speed_perturb=speed_perturb))
        # Whole epochs until `min_seconds`; the steady rate leaves out each epoch's first
        # batch, which waits for the workers to start (once per epoch, negligible on 960 h).
        total_s = steady_s = audio_s = steady_audio_s = 0.0
        epoch = 0
        while total_s < min_seconds:
            trainer.sampler.set_epoch(epoch)
            trainer.sampler.position = 0
            batches = []
            t0 = time.perf_counter()
            for batch in trainer._loader(trainer.train_utts, trainer.sampler, train=True):
                a = float(batch.wav_lens.sum()) / exp0.features.sample_rate
                audio_s += a
                if batches:
                    steady_audio_s += a
                else:
                    t1 = time.perf_counter()
                batches.append(batch)
            t2 = time.perf_counter()
            total_s += t2 - t0
            steady_s += t2 - t1
            epoch += 1
        rate = steady_audio_s / steady_s
        rows.append({"what": "loader", "num_workers": w, "speed_perturb": list(speed_perturb or [1.0]),
                     "epochs": epoch, "audio_s": round(audio_s, 1), "wall_s": round(total_s, 2),
                     "audio_s_per_s_with_startup": round(audio_s / total_s, 1),
                     "audio_s_per_s": round(rate, 1), "per_worker": round(rate / max(1, w), 1)})
    trainer.exp = exp0
    trainer.model.train()
    with torch.no_grad():
        audio_s = sum(float(b.wav_lens.sum()) for b in batches) / exp0.features.sample_rate
        t0 = time.perf_counter()
        for batch in batches:
            trainer.model.features(batch.wav, batch.wav_lens)
        wall = time.perf_counter() - t0
    rows.append({"what": "features+specaugment (CPU, in-model)", "num_workers": None,
                 "threads": torch.get_num_threads(), "audio_s": round(audio_s, 1), "wall_s": round(wall, 2),
                 "audio_s_per_s": round(audio_s / wall, 1)})
    return rows


def _asr_loss(model, batch):
    """The encoder and the ASR CTC head only (what the SpeechBrain loop trains)."""
    enc = model.encode(batch.wav, batch.wav_lens)
    task = model.tasks[model.asr_task]
    return task.loss(task(enc.layers[task.layer], enc.lens), enc.lens, batch.targets[model.asr_task])


def trainer_vs_bare(config: str, manifest: str, steps: int) -> dict:
    """Trainer.fit for `steps` updates (over as many epochs as that takes) vs the bare step
    on the same batches (all tasks), and
    SpeechBrain's Brain vs the bare step on encoder + ASR CTC only. Each mode starts from a
    fresh, identically seeded model, so all include the first steps' warm-up alike."""
    out: dict = {"steps": steps}
    with tempfile.TemporaryDirectory(prefix="rehearsal_fit_") as tmp:
        probe = make_trainer(config, manifest, f"{tmp}/probe")
        per_epoch = len(probe.sampler)
        epochs = -(-steps // per_epoch)
        over = [f"train.max_steps={steps}", f"train.epochs={epochs}"]
        # Warm-up, untimed: the process's first steps pay one-time costs (kernel selection,
        # allocator growth) that would otherwise land on whichever mode runs first.
        tr = make_trainer(config, manifest, f"{tmp}/warm", *over)
        tr.sampler.set_epoch(0)
        for batch in itertools.islice(tr._loader(tr.train_utts, tr.sampler, train=True), 5):
            _asr_loss(tr.model, batch).backward()
            tr._optimizer_step()
        # Full loop: loader workers, every task, weighting, clipping, schedule, logging, the
        # end-of-epoch checkpoint and final.pt (timed separately: a once-per-run cost).
        tr = make_trainer(config, manifest, f"{tmp}/fit", *over)
        sr = tr.exp.features.sample_rate
        batch_ids = [b for e in range(epochs) for b in tr.sampler.batches(e)][:steps]
        dur = {i: u.duration for i, u in enumerate(tr.train_utts)}
        audio_s = sum(dur[i] for b in batch_ids for i in b)
        fit_s, finish_s = _timed_fit(tr, steps)
        out.update(epochs=epochs, audio_s=round(audio_s, 1), fit_s=round(fit_s, 2), finish_s=round(finish_s, 2))

        # Bare: a fresh trainer's loader, batches gathered first, then only the step is timed.
        tr = make_trainer(config, manifest, f"{tmp}/bare", *over)
        batches = []
        for e in range(epochs):  # the loader of each epoch, as fit builds it
            tr.epoch = e
            tr.sampler.set_epoch(e)
            batches += list(tr._loader(tr.train_utts, tr.sampler, train=True))
        batches = batches[:steps]
        assert sum(float(b.wav_lens.sum()) for b in batches) / sr == approx(audio_s)
        tr.model.train()
        t0 = time.perf_counter()
        for batch in batches:
            losses, _, _ = tr.model(batch.wav, batch.wav_lens, batch.targets)
            losses = {k: v for k, v in losses.items() if batch.targets[k].present.any()}
            tr.weighting.backward(losses, tr.model.shared_parameters(), tr.step)
            tr._optimizer_step()
        out["bare_s"] = round(time.perf_counter() - t0, 2)

        # Trainer.fit again, fed those same in-memory batches (as Brain is below): the loop's
        # own cost (agreement, logging, clipping, schedule, checkpoints) without the loader,
        # which on this CPU-only machine competes with the model step for the same 2 cores.
        tr = make_trainer(config, manifest, f"{tmp}/fit_mem", *over)
        per_epoch = [len(tr.sampler.batches(e)) for e in range(epochs)]
        by_epoch = [batches[sum(per_epoch[:e]):sum(per_epoch[:e + 1])] for e in range(epochs)]
        tr._loader = lambda utts, sampler, train: iter(by_epoch[tr.epoch][tr.batches_done:]) if train else []
        fit_mem_s, fit_mem_finish_s = _timed_fit(tr, steps)
        out.update(fit_mem_s=round(fit_mem_s, 2), fit_mem_finish_s=round(fit_mem_finish_s, 2))

        # Bare, encoder + ASR CTC only, fresh model.
        tr = make_trainer(config, manifest, f"{tmp}/bare_asr", *over)
        tr.model.train()
        t0 = time.perf_counter()
        for batch in batches:
            _asr_loss(tr.model, batch).backward()
            tr._optimizer_step()
        out["bare_asr_s"] = round(time.perf_counter() - t0, 2)

        # SpeechBrain's Brain on the same in-memory batches, same model, optimizer, clipping.
        tr = make_trainer(config, manifest, f"{tmp}/sb", *over)
        try:
            out["speechbrain_s"] = round(_speechbrain_fit(tr, batches, f"{tmp}/sb"), 2)
        except Exception as e:  # noqa: BLE001 - a side-by-side; ours stands without it
            out["speechbrain_error"] = f"{type(e).__name__}: {e}"
    for key in ("fit", "bare", "bare_asr", "speechbrain"):  # fit_mem: below
        if f"{key}_s" in out:
            out[f"{key}_audio_s_per_s"] = round(audio_s / out[f"{key}_s"], 1)
    out["fit_loop_audio_s_per_s"] = round(audio_s / (out["fit_s"] - out["finish_s"]), 1)
    out["fit_over_bare"] = round(out["bare_s"] / out["fit_s"], 3)
    out["fit_loop_over_bare"] = round(out["bare_s"] / (out["fit_s"] - out["finish_s"]), 3)
    out["fit_mem_audio_s_per_s"] = round(audio_s / out["fit_mem_s"], 1)
    out["fit_mem_over_bare"] = round(out["bare_s"] / out["fit_mem_s"], 3)
    out["fit_mem_loop_over_bare"] = round(out["bare_s"] / (out["fit_mem_s"] - out["fit_mem_finish_s"]), 3)
    if "speechbrain_s" in out:
        out["speechbrain_over_bare_asr"] = round(out["bare_asr_s"] / out["speechbrain_s"], 3)
    return out


def _timed_fit(tr, steps: int) -> tuple[float, float]:
    """(wall s of tr.fit(), of which its final save and averaging `_finish`)."""
    finish, orig_finish = {}, tr._finish

    def timed_finish():
        t = time.perf_counter()
        orig_finish()
        finish["s"] = time.perf_counter() - t

    tr._finish = timed_finish
    t0 = time.perf_counter()
    tr.fit()
    assert tr.step == steps, f"fit made {tr.step} updates, expected {steps}"
    return time.perf_counter() - t0, finish["s"]


def approx(x: float, rel: float = 1e-3):
    class _A:
        def __eq__(self, y):
            return abs(y - x) <= rel * max(abs(x), 1e-9)
    return _A()


def _speechbrain_fit(tr, batches, folder: str) -> float:
    import speechbrain as sb

    class CTCBrain(sb.Brain):
        def compute_forward(self, batch, stage):
            return batch

        def compute_objectives(self, batch, _, stage):
            return _asr_loss(self.modules.model, batch)

    opt = tr.exp.optim
    brain = CTCBrain(
        modules={"model": tr.model},
        opt_class=lambda params: torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas,
                                                   weight_decay=opt.weight_decay, fused=True),
        run_opts={"device": "cpu", "noprogressbar": True, "max_grad_norm": opt.clip_grad_norm},
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    t0 = time.perf_counter()
    brain.fit(range(1, 2), loader, progressbar=False)
    return time.perf_counter() - t0
