"""Peer benchmarks: the VAD head against Silero VAD, the speaker head against Resemblyzer.

The peers are optional extras (`MTSPEECH_PEERS=1 bash scripts/setup.sh`); both ship their
weights inside their packages, so nothing is downloaded. tests/test_peers_benchmark.py
tests the frame mapping and the bootstrap without them.

    python benchmarks/peers.py --model exp/synthetic/all/final.pt --data data/synthetic --out peers.json

VAD: frame F1 at 10 ms resolution against the manifests' exact speech segments, pooled over
every frame of a split (`metrics.frame_prf`, the F1 `mtspeech evaluate` reports). 10 ms frame
k covers [10k, 10k + 10) ms of the file (num_samples // 160 frames) and is speech when its
centre lies inside a segment [start, end). Each detector's own frames are mapped to those
10 ms frames by one rule: a 10 ms frame takes the decision of the detector frame whose
centre is nearest to its own centre.
  - head: the VAD head, full context, p(speech) > the task's threshold (0.5) per encoder
    frame (40 ms, centred where `mtspeech.tasks.vad.frame_centres_s` says);
  - silero: Silero VAD's per-window probabilities (`model.audio_forward`, the same
    512-sample / 32 ms windows and state that `get_speech_timestamps` runs), > 0.5, window j
    centred at sample 512 j + 256: raw frame decisions, like the head's;
  - silero-ts: `get_speech_timestamps` with every default (threshold 0.5, 250 ms minimum
    speech, 100 ms minimum silence, 30 ms padding): the segments a Silero user gets; a
    10 ms frame is speech when its centre lies inside one.
  `head@40ms` is the head's F1 on its own encoder frames, as `mtspeech evaluate` computes it
  (a cross-check against eval results; not comparable with the 10 ms columns).

Speaker: EER (`metrics.equal_error_rate`) over cosine trials of *every* pair of utterances
of the split (all same-speaker and all different-speaker pairs; the trial list depends only
on the speaker labels, so both systems score the same list). The interval on head minus
Resemblyzer is a paired bootstrap over *speakers* (trials are not independent: every trial
of a voice moves together): each resample draws the split's speakers with replacement and
weights a same-speaker trial by its speaker's count and a different-speaker trial by the
product of the two counts. test-unseen has 4 voices, too few for that interval to say
much; test-voices (`mtspeech synth --voices-only`) has 24.
  - head: the speaker head's pooled embedding (`SpeakerTask.embed`), full context;
  - resemblyzer: `VoiceEncoder().embed_utterance(preprocess_wav(wav, 16000))`, the library's
    own pipeline (its volume normalisation and webrtcvad silence trimming included).

Goals (issue 14): head F1 >= the better Silero F1 on every split; head EER <= Resemblyzer's.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import add_model_arguments, run_main  # noqa: E402

from mtspeech import metrics as M  # noqa: E402
from mtspeech.checkpoint import load_model  # noqa: E402
from mtspeech.data.audio import load_audio  # noqa: E402
from mtspeech.data.geometry import HOP_SAMPLES, SAMPLE_RATE  # noqa: E402
from mtspeech.data.manifest import read_manifest  # noqa: E402
from mtspeech.tasks import Role, task_with_role  # noqa: E402
from mtspeech.tasks.layer_mix import task_input  # noqa: E402
from mtspeech.tasks.vad import frame_centres_s  # noqa: E402

FRAME_SAMPLES = HOP_SAMPLES  # 10 ms scoring frames: one feature hop
SILERO_WINDOW = 512  # Silero VAD's native window at 16 kHz (32 ms)
VAD_SPLITS = ("test", "test-unseen", "test-voices", "test-snr10", "test-snr0", "test-unseen-snr10",
              "test-unseen-snr0", "test-voices-snr10", "test-voices-snr0")
SPEAKER_SPLITS = ("test-unseen", "test-unseen-snr10", "test-unseen-snr0", "test-voices", "test-voices-snr10",
                  "test-voices-snr0")
BOOTSTRAP_SAMPLES = 1000

log = logging.getLogger("peers")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    add_model_arguments(ap)
    ap.add_argument("--data", required=True, help="folder of <split>.jsonl manifests with `speech` segments")
    ap.add_argument("--vad-splits", nargs="*", default=list(VAD_SPLITS))
    ap.add_argument("--speaker-splits", nargs="*", default=list(SPEAKER_SPLITS))
    ap.add_argument("--limit", type=int, default=0, help="first N utterances of each split (0: all)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: fastest on a shared CPU)")


# ----------------------------------------------------------------------------- frames


def segment_frames(segments_s, num_frames: int) -> np.ndarray:
    """Segments [[start_s, end_s], ...] → (num_frames,) bool: 10 ms frame centre inside one."""
    centres = (np.arange(num_frames) + 0.5) * FRAME_SAMPLES / SAMPLE_RATE
    out = np.zeros(num_frames, dtype=bool)
    for start, end in segments_s:
        out |= (centres >= start) & (centres < end)
    return out


def nearest_frames(centres_s: np.ndarray, decisions: np.ndarray, num_frames: int) -> np.ndarray:
    """Detector decisions (J,) at frame centres (J,) seconds → (num_frames,) 10 ms decisions,
    each from the detector frame whose centre is nearest (all False if J = 0)."""
    if len(decisions) == 0:
        return np.zeros(num_frames, dtype=bool)
    centres = (np.arange(num_frames) + 0.5) * FRAME_SAMPLES / SAMPLE_RATE
    right = np.clip(np.searchsorted(centres_s, centres), 1, len(centres_s) - 1) if len(centres_s) > 1 \
        else np.zeros(num_frames, dtype=int)
    left = np.maximum(right - 1, 0)
    pick = np.where(np.abs(centres - centres_s[left]) <= np.abs(centres_s[right] - centres), left, right)
    return np.asarray(decisions, dtype=bool)[pick]


# ----------------------------------------------------------------------------- systems


class Head:
    """The checkpoint's VAD and speaker heads, one utterance at a time (no padding)."""

    def __init__(self, checkpoint: Path):
        self.model, _, _ = load_model(checkpoint, "cpu")
        self.vad = task_with_role(self.model.tasks, Role.SPEECH_ACTIVITY)
        self.speaker = task_with_role(self.model.tasks, Role.SPEAKER_EMBEDDING)

    @torch.no_grad()
    def run(self, wav: torch.Tensor):
        """wav (S,) → (VAD probs (T',) or None, speaker embedding (E,) or None, frames T')."""
        enc = self.model.encode(wav[None], torch.tensor([len(wav)]))
        logits = self.model.task_logits(enc)
        probs = emb = None
        if self.vad is not None:
            probs = self.vad.speech_probs(logits[self.vad.name].float())[0].numpy()
        if self.speaker is not None:
            emb = self.speaker.embed(task_input(self.speaker, enc), enc.lens).float()[0].numpy()
        return probs, emb, int(enc.lens[0])


def vad_split(head: Head, silero, utts) -> dict:
    """Pooled 10 ms F1 of head, silero and silero-ts on one split; and the head's own-frame F1."""
    from silero_vad import get_speech_timestamps

    pred = {"head": [], "silero": [], "silero-ts": []}
    ref, head_own, head_ref = [], [], []
    for u in utts:
        wav = load_audio(u.audio, SAMPLE_RATE)
        n = len(wav) // FRAME_SAMPLES
        ref.append(segment_frames(u.speech, n))
        probs, _, t = head.run(wav)
        on = probs[:t] > head.vad.cfg.threshold
        pred["head"].append(nearest_frames(frame_centres_s(t).numpy(), on, n))
        labels = head.vad.collate([u])  # the head's own frames, exactly as evaluate scores them
        k = min(t, int(labels.lens[0]))
        head_own.append(on[:k])
        head_ref.append(labels.values[0, :k].numpy() > 0.5)
        p = silero.audio_forward(wav[None], SAMPLE_RATE)[0].numpy()
        centres = (np.arange(len(p)) * SILERO_WINDOW + SILERO_WINDOW / 2) / SAMPLE_RATE
        pred["silero"].append(nearest_frames(centres, p > 0.5, n))
        spans = get_speech_timestamps(wav, silero, sampling_rate=SAMPLE_RATE)
        pred["silero-ts"].append(segment_frames([[s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE]
                                                 for s in spans], n))
    y = np.concatenate(ref)
    out = {"utterances": len(utts), "frames_10ms": int(len(y))}
    for name, frames in pred.items():
        precision, recall, f1 = M.frame_prf(np.concatenate(frames), y)
        out[name] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}
    out["head@40ms"] = {"f1": round(M.frame_prf(np.concatenate(head_own), np.concatenate(head_ref))[2], 4)}
    return out


def all_pair_trials(embeddings, speakers):
    """Cosine scores of every pair i < j, same-speaker labels, and each side's speaker index."""
    emb = np.stack(embeddings).astype(np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    names, spk = np.unique(np.asarray(speakers), return_inverse=True)
    i, j = np.triu_indices(len(emb), k=1)
    return np.einsum("md,md->m", emb[i], emb[j]), spk[i] == spk[j], spk[i], spk[j], len(names)


def speaker_bootstrap(scores: dict, labels, spk_a, spk_b, n_speakers: int,
                      samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """95 % intervals of each system's EER and of their difference (first minus second),
    resampling speakers with replacement (see the module docstring)."""
    rng = np.random.default_rng(seed)
    names = list(scores)
    draws = {name: [] for name in names}
    for _ in range(samples):
        counts = np.bincount(rng.integers(0, n_speakers, n_speakers), minlength=n_speakers).astype(float)
        weights = np.where(labels, counts[spk_a], counts[spk_a] * counts[spk_b])
        if not weights[labels].any() or not weights[~labels].any():
            continue  # one speaker drawn every time: no different-speaker trial to score
        for name in names:
            draws[name].append(M.equal_error_rate(scores[name], labels, weights)[0])
    diff = np.subtract(*(np.asarray(draws[n]) for n in names[:2]))
    interval = lambda x: [round(float(v), 4) for v in np.percentile(x, [2.5, 97.5])]  # noqa: E731
    return {"samples": len(diff), **{f"{n}_eer_ci95": interval(draws[n]) for n in names},
            "difference": f"{names[0]} - {names[1]}", "difference_ci95": interval(diff)}


def speaker_split(head: Head, voice_encoder, utts) -> dict:
    """EER of head and Resemblyzer embeddings over every pair of labelled utterances, and the
    speaker-bootstrap interval of their difference."""
    from resemblyzer import preprocess_wav

    utts = [u for u in utts if u.speaker is not None]
    head_emb, peer_emb = [], []
    for u in utts:
        wav = load_audio(u.audio, SAMPLE_RATE)
        head_emb.append(head.run(wav)[1])
        peer_emb.append(voice_encoder.embed_utterance(preprocess_wav(wav.numpy(), source_sr=SAMPLE_RATE)))
    speakers = [u.speaker for u in utts]
    out = {"utterances": len(utts), "speakers": len(set(speakers))}
    scores = {}
    for name, emb in (("head", head_emb), ("resemblyzer", peer_emb)):
        scores[name], labels, spk_a, spk_b, n_speakers = all_pair_trials(emb, speakers)
        if labels.all() or not labels.any():
            raise SystemExit(f"{len(utts)} utterances of {len(set(speakers))} speaker(s): EER needs both "
                             "same- and different-speaker pairs (raise --limit)")
        out[name] = {"eer": round(M.equal_error_rate(scores[name], labels)[0], 4)}
    out["target_trials"], out["nontarget_trials"] = int(labels.sum()), int(len(labels) - labels.sum())
    if n_speakers > 2:
        out["bootstrap"] = speaker_bootstrap(scores, labels, spk_a, spk_b, n_speakers)
    return out


# ----------------------------------------------------------------------------- the benchmark


def _manifest(data: Path, split: str, limit: int):
    path = data / f"{split}.jsonl"
    if not path.is_file():
        raise SystemExit(f"manifest {path} not found (mtspeech synth --voices-only, --twins-only, then prepare)")
    utts = read_manifest(path)
    return utts[:limit] if limit else utts


def run(args) -> dict:
    try:
        from resemblyzer import VoiceEncoder
        from silero_vad import load_silero_vad
    except ImportError as e:
        raise SystemExit(f"a peer is not installed ({e}); run MTSPEECH_PEERS=1 bash scripts/setup.sh") from None
    torch.set_num_threads(args.threads)
    ckpt, tmp = args.model, None
    if args.random_model:
        from _tiny_model import build_random_checkpoint

        tmp = tempfile.TemporaryDirectory(prefix="mtspeech_bench_")
        ckpt = build_random_checkpoint(Path(tmp.name) / "tiny_random.pt")
    head = Head(Path(ckpt))
    data = Path(args.data)
    t0 = time.perf_counter()
    vad, speaker = {}, {}
    if head.vad is None and args.vad_splits:
        raise SystemExit(f"{ckpt}: the model has no VAD head")
    if head.speaker is None and args.speaker_splits:
        raise SystemExit(f"{ckpt}: the model has no speaker head")
    if args.vad_splits:
        silero = load_silero_vad()
        for split in args.vad_splits:
            utts = [u for u in _manifest(data, split, args.limit) if u.speech is not None]
            vad[split] = vad_split(head, silero, utts)
            log.info("vad %s: %s", split, vad[split])
    if args.speaker_splits:
        encoder = VoiceEncoder("cpu", verbose=False)
        for split in args.speaker_splits:
            speaker[split] = speaker_split(head, encoder, _manifest(data, split, args.limit))
            log.info("speaker %s: %s", split, speaker[split])
    if tmp is not None:
        tmp.cleanup()
    goals = {
        "vad_f1_head_ge_silero": {s: r["head"]["f1"] >= max(r["silero"]["f1"], r["silero-ts"]["f1"])
                                  for s, r in vad.items()},
        "eer_head_le_resemblyzer": {s: r["head"]["eer"] <= r["resemblyzer"]["eer"] for s, r in speaker.items()},
    }
    return {"benchmark": "peers", "model": "random-tiny" if args.random_model else str(args.model),
            "data": str(data), "vad": vad, "speaker": speaker, "goals": goals,
            "elapsed_s": round(time.perf_counter() - t0, 1)}


def render(result: dict) -> str:
    lines = []
    if result["vad"]:
        lines += ["VAD frame F1 at 10 ms (exact segments; P/R in the JSON)", "",
                  "| split | utts | head | Silero (frames) | Silero (timestamps) | head ≥ Silero | head@40ms |",
                  "|---|---:|---:|---:|---:|:---:|---:|"]
        for split, r in result["vad"].items():
            ok = "yes" if result["goals"]["vad_f1_head_ge_silero"][split] else "**no**"
            lines.append(f"| {split} | {r['utterances']} | {r['head']['f1']:.3f} | {r['silero']['f1']:.3f} | "
                         f"{r['silero-ts']['f1']:.3f} | {ok} | {r['head@40ms']['f1']:.3f} |")
    if result["speaker"]:
        lines += ["", "Speaker EER, every pair of utterances (lower is better)", "",
                  "| split | utts / speakers | target / non-target trials | head | Resemblyzer "
                  "| head ≤ Resemblyzer | head − Resemblyzer, 95 % CI over speakers |",
                  "|---|---:|---:|---:|---:|:---:|---:|"]
        for split, r in result["speaker"].items():
            ok = "yes" if result["goals"]["eer_head_le_resemblyzer"][split] else "**no**"
            lines.append(f"| {split} | {r['utterances']} / {r['speakers']} | {r['target_trials']} / "
                         f"{r['nontarget_trials']} | {100 * r['head']['eer']:.1f} % | "
                         f"{100 * r['resemblyzer']['eer']:.1f} % | {ok} | {_interval(r)} |")
    lines.append(f"\n({result['elapsed_s']} s, model {result['model']})")
    return "\n".join(lines)


def _interval(r: dict) -> str:
    if "bootstrap" not in r:
        return "–"
    lo, hi = r["bootstrap"]["difference_ci95"]
    return f"{100 * (r['head']['eer'] - r['resemblyzer']['eer']):+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_main(__doc__, add_arguments, run, render, argv)


if __name__ == "__main__":
    main()
