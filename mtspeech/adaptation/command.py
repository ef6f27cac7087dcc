"""`mtspeech adapt`: fit a trained model to one new voice from k transcribed utterances.

    mtspeech adapt exp/synthetic/all/final.pt --manifest data/synthetic/test-voices.jsonl \\
        --speaker 1170 --k 5 --params layer-norms --out exp/adapted/1170.pt
    mtspeech adapt final.pt alice1.wav alice2.wav --params lora --rank 4 --out alice.pt   # + alice1.txt ...

Only the declared parameter set (`param_sets.py`) is trained, on the joint model's ASR CTC
loss; the result is merged into ordinary weights, so OUT loads wherever a checkpoint loads
(`evaluate`, `transcribe --model`, `serve --model`, `export`) and streams as the base model
did. OUT's `adaptation` entry records what was done (set, k, the utterance ids, steps, the
loss before and after, the start: the trained values or a Reptile init from `meta-train`);
`OUT.delta.pt` holds only the changed tensors (LoRA: its factors), the size that a per-voice
copy costs, and `param_sets.apply_delta` rebuilds OUT's weights from it and the base.

`--params speaker-embedding` takes no gradient step and no transcript: the speaker adapter that
`mtspeech train-speaker-adapter` stored in the checkpoint maps the speaker head's embedding of
the k utterances to new layer-norms values (`speaker_adapter.py`); OUT and its delta are those
of a layer-norms adaptation, so everything downstream reads them alike.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from mtspeech.adaptation import inputs
from mtspeech.adaptation.fine_tune import asr_loss, fine_tune
from mtspeech.adaptation.param_sets import (KINDS, LORA_TARGETS, AdaptationError, ParamSet, ParamSetConfig,
                                           weights_fingerprint)
from mtspeech.adaptation.speaker_adapter import ADAPTER_KEY, condition, load_adapter
from mtspeech.checkpoint import CheckpointError, load_state, save_atomic

log = logging.getLogger(__name__)

# Adam step sizes for the default 20 steps. With k of a few utterances the danger is learning
# their words, not the voice: too large a step lowers the loss on the adaptation utterances and
# raises it on the voice's others. Chosen on adapt-dev, a dev split of new voices (docs/data.md),
# by benchmarks/adaptation_tuning.py: per set, the lowest CER on each voice's other utterances
# averaged over k = 1, 5, 20 (4 voices, seed 0), each choice inside its grid (a larger and a
# smaller step were worse); docs/results/adaptation/adapt-dev-tuning.json, whose page names the
# commands. With 4 voices the neighbours are often within the interval: the rule picks. The test
# splits were scored once afterwards (layer-norms and lora; docs/results/adaptation/).
DEFAULT_LR = {"input-norm": 1e-2, "layer-norms": 1e-3, "lora": 1e-3}
INIT_KEY = "adaptation_init"  # a checkpoint's meta-learned start (written by `mtspeech meta-train`)


def delta_path(out: str | Path) -> Path:
    """Where the delta file of adapted checkpoint `out` goes: `NAME.delta.pt` beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".delta.pt")


def load_base(checkpoint: str | Path) -> tuple[dict, torch.nn.Module]:
    """A checkpoint's dict and its model (eval mode, CPU), with adaptation's error type."""
    from mtspeech.checkpoint import load_model

    try:
        return load_state(checkpoint), load_model(checkpoint)[0]
    except CheckpointError as e:
        raise AdaptationError(str(e)) from None


def start_values(state: dict, pset: ParamSet, init: str, seed: int) -> tuple[dict[str, torch.Tensor], str]:
    """The set's starting tensors and where they came from ("model" or "meta").

    init "auto" takes the checkpoint's meta-learned start when it was learned for this very set
    (same kind, layers, rank, ...), else the trained values; "meta" insists on it."""
    meta = state.get(INIT_KEY)
    fits = meta is not None and meta["set"] == pset.cfg.as_dict()
    if init == "meta" and not fits:
        have = "none" if meta is None else f"one for {meta['set']}"
        raise AdaptationError(f"--init meta: the checkpoint holds no Reptile start for {pset.cfg.as_dict()} "
                              f"({have}); run `mtspeech meta-train` with the same set first")
    if init in ("meta", "auto") and fits:
        return {k: v.clone() for k, v in meta["tensors"].items()}, "meta"
    if init == "auto" and meta is not None:
        log.warning("the checkpoint's Reptile start is for %s, not this set: starting from the trained values",
                    meta["set"])
    return pset.initial(seed), "model"


def adapt(checkpoint: str | Path, utts: list, cfg: ParamSetConfig, out: str | Path, *, k: int | None = None,
          steps: int | None = None, lr: float | None = None, seed: int = 0, init: str = "auto",
          max_batch_seconds: float = 60.0, device: str = "cpu", progress: bool = False) -> dict:
    """Adapt `checkpoint` to `utts` (one voice; `k` of them drawn with `seed`), write `out` and
    its delta file; returns the record stored in `out` under `adaptation`. A gradient set takes
    `steps` Adam steps (default 20) of size `lr` (default: DEFAULT_LR); speaker-embedding takes
    none and needs no transcripts: the checkpoint's speaker adapter sets the layer-norms."""
    if init not in ("auto", "model", "meta"):
        raise AdaptationError(f"--init must be auto, model or meta, got {init!r}")
    conditioned = cfg.kind == "speaker-embedding"
    if conditioned and (steps is not None or lr is not None or init == "meta"):
        raise AdaptationError("--params speaker-embedding takes no gradient steps: leave out --steps, --lr and "
                              "--init meta (its adapter was trained by `mtspeech train-speaker-adapter`)")
    steps = 20 if steps is None else steps
    if steps < 1:
        raise AdaptationError(f"--steps must be at least 1, got {steps}")
    chosen = inputs.choose(utts, k, seed, need_text=not conditioned)
    state, model = load_base(checkpoint)
    model.to(device)
    geometry = model.geometry
    wavs = inputs.load_waves(chosen, geometry.sample_rate)
    transcribed = all(u.text and u.text.strip() for u in chosen)
    batches = (inputs.batches(chosen, wavs, model.tasks[model.asr_task], max_batch_seconds, geometry.sample_rate)
               if transcribed else None)
    if conditioned:
        pset, values, seconds, how = _conditioned(state, model, cfg, wavs)
        # the loss on the k utterances is a record, not an input: only when they have transcripts
        losses = [asr_loss(model, pset, t, batches, device) if batches else None for t in (pset.initial(), values)]
        steps, lr, start_from = 0, None, "speaker-adapter"
    else:
        pset = ParamSet(model, cfg)
        start, start_from = start_values(state, pset, init, seed)
        lr = DEFAULT_LR[cfg.kind] if lr is None else lr
        result = fine_tune(model, pset, start, batches, steps, lr, device=device, progress=progress)
        values, seconds, losses, how = result.trainable, result.seconds, result.losses, f"{steps} steps"

    out = Path(out)
    delta = {name: t.contiguous() for name, t in pset.delta(values).items()}
    record = {
        "set": pset.cfg.as_dict(), "k": len(chosen), "utterances": [u.id for u in chosen],
        "speakers": sorted({u.speaker for u in chosen if u.speaker is not None}),
        "steps": steps, "lr": lr, "seed": seed, "init": start_from, "base_checkpoint": str(checkpoint),
        "loss_before": losses[0], "loss_after": losses[-1], "seconds": seconds,
        "audio_seconds": sum(len(w) for w in wavs) / geometry.sample_rate,
        "delta_file": delta_path(out).name, "delta_values": sum(v.numel() for v in delta.values()),
    }
    save_atomic({"set": pset.cfg.as_dict(), "tensors": delta, "adaptation": record,
                 "base_weights": weights_fingerprint(state["model"])}, delta_path(out))
    record["delta_bytes"] = delta_path(out).stat().st_size
    adapted = {key: value for key, value in state.items() if key not in (INIT_KEY, ADAPTER_KEY)}
    adapted["model"] = pset.merged_state(values)
    adapted["adaptation"] = record
    save_atomic(adapted, out)
    loss = "" if losses[0] is None else f": ASR loss {losses[0]:.3f} -> {losses[-1]:.3f} on them"
    log.info("adapted %s to %d utterance(s) (%s, %s)%s; %s (%d bytes of delta)", checkpoint, len(chosen),
             pset.cfg.kind, how, loss, out, record["delta_bytes"])
    return record


def _conditioned(state: dict, model: torch.nn.Module, cfg: ParamSetConfig,
                 wavs: list[torch.Tensor]) -> tuple[ParamSet, dict[str, torch.Tensor], float, str]:
    """speaker-embedding: the set, its values from the checkpoint's adapter for the voice of
    `wavs`, the wall seconds from waveforms to values, and how (for the log)."""
    adapter, pset = load_adapter(state, model)
    if cfg.layers is not None and cfg.layers != adapter.cfg.layers:
        raise AdaptationError(f"--layers {cfg.layers}: the checkpoint's speaker adapter sets the top "
                              f"{adapter.cfg.layers or 'all'} blocks' LayerNorms; leave --layers out")
    done = condition(model, adapter, pset, wavs)
    return pset, done.values, done.seconds, "no gradient step: the speaker adapter"


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that declare a parameter set (shared with `mtspeech meta-train`)."""
    parser.add_argument("--params", default="layer-norms", metavar="SET",
                        help=f"what to adapt: {', '.join(KINDS)}")
    parser.add_argument("--layers", type=int, default=None,
                        help="top encoder blocks on the ASR path to adapt (layer-norms, lora; default all)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=8.0, help="LoRA scale numerator (ΔW = alpha/rank · B A)")
    parser.add_argument("--lora-target", default="attention", help=f"LoRA's projections: {', '.join(LORA_TARGETS)}")


def set_config(args: argparse.Namespace) -> ParamSetConfig:
    return ParamSetConfig(kind=args.params, layers=args.layers, rank=args.rank, alpha=args.alpha,
                          target=args.lora_target)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mtspeech adapt`."""
    parser.add_argument("checkpoint", help="trained checkpoint (final.pt), or one `meta-train` wrote")
    parser.add_argument("files", nargs="*", help="audio files, each with a transcript FILE.txt beside it "
                                                 "(speaker-embedding: transcripts optional)")
    parser.add_argument("--manifest", default=None, help="JSON Lines manifest of the voice's utterances instead of files")
    parser.add_argument("--speaker", default=None, help="the voice to take from a manifest of several")
    parser.add_argument("--out", required=True, help="the adapted checkpoint to write (and OUT.delta.pt)")
    add_set_arguments(parser)
    parser.add_argument("--k", type=int, default=None, help="utterances to adapt on, drawn with --seed (default all)")
    parser.add_argument("--steps", type=int, default=None,
                        help="Adam steps on all k utterances (default 20; speaker-embedding takes none)")
    parser.add_argument("--lr", type=float, default=None, help="Adam step size (default depends on --params)")
    parser.add_argument("--seed", type=int, default=0, help="draws the k utterances and LoRA's first factor")
    parser.add_argument("--init", default="auto", choices=("auto", "model", "meta"),
                        help="start from the trained values (model) or the checkpoint's Reptile start "
                             "(meta); auto: meta when the checkpoint has one for this set")
    parser.add_argument("--max-batch-seconds", type=float, default=60.0, help="padded audio per forward pass")
    parser.add_argument("--device", default="cpu")


def main(args: argparse.Namespace) -> int:
    try:
        if bool(args.manifest) == bool(args.files):
            raise AdaptationError("give the voice's utterances either as --manifest or as audio files, not both or neither")
        cfg = set_config(args)
        need_text = cfg.kind != "speaker-embedding"  # conditioning reads only the voice
        utts = (inputs.from_manifest(args.manifest, args.speaker) if args.manifest
                else inputs.from_files(args.files, need_transcripts=need_text))
        adapt(args.checkpoint, utts, cfg, args.out, k=args.k, steps=args.steps, lr=args.lr, seed=args.seed,
              init=args.init, max_batch_seconds=args.max_batch_seconds, device=args.device, progress=True)
    except AdaptationError as e:
        log.error("%s", e)
        return 2
    return 0
