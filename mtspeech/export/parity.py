"""Parity of two encoder steps (PyTorch vs ONNX, fp32 vs int8): logits and transcripts.

Two measurements, both on the streaming path with caches carried chunk to chunk:

- `logit_parity`: run both steps over every chunk of some utterances' features (the same
  windows the recognizer cuts, the last one shorter) and report, per head, the largest
  absolute difference of the logits.
- `transcript_parity`: decode recordings through two recognizers that differ only in their
  encoder step, and report the CER of each against the references (if given) and the CER of
  the second against the first's transcripts (how far the exported model drifts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mtspeech.encoders.subsampling import chunk_windows
from mtspeech.metrics import cer
from mtspeech.streaming.encoder import EncoderStep


@torch.inference_mode()
def logit_parity(step_a: EncoderStep, step_b: EncoderStep, feats: Sequence[torch.Tensor]) -> dict[str, float]:
    """role → max |logits_a - logits_b| over every chunk of every utterance (feats: (T, F) each).

    Also checks that both steps give every chunk the same number of valid frames.
    """
    roles = tuple(r for r in step_a.roles if r in step_b.roles)
    worst = {r: 0.0 for r in roles}
    for x in feats:
        cache_a, cache_b = step_a.init_cache(1), step_b.init_cache(1)
        for start, end in chunk_windows(x.shape[0], step_a.chunk_frames):
            out_a, cache_a = step_a(x[None, start:end], cache_a, roles)
            out_b, cache_b = step_b(x[None, start:end], cache_b, roles)
            if not torch.equal(out_a.lens.cpu(), out_b.lens.cpu()):
                raise AssertionError(f"chunk [{start}, {end}): {out_a.lens.tolist()} vs {out_b.lens.tolist()} frames")
            for r in roles:
                diff = (out_a.logits[r].float().cpu() - out_b.logits[r].float().cpu()).abs()
                worst[r] = max(worst[r], float(diff.max()) if diff.numel() else 0.0)
    return worst


@dataclass(frozen=True)
class TranscriptParity:
    """`texts_a`/`texts_b`: one transcript per recording (its finals joined); `cer_a`/`cer_b`:
    CER against the references (None without them); `cer_b_vs_a`: CER of b taking a as the
    reference; `identical`: recordings whose two transcripts are equal."""

    texts_a: list[str]
    texts_b: list[str]
    cer_a: float | None
    cer_b: float | None
    cer_b_vs_a: float
    identical: int


def transcript_parity(rec_a, rec_b, recordings: Sequence[np.ndarray], refs: Sequence[str] | None = None,
                      sample_rate: int | None = None) -> TranscriptParity:
    """Decode every recording (float samples at `sample_rate` Hz; default: the model's) with
    both `StreamingRecognizer`s, one stream each."""
    def texts(rec) -> list[str]:
        return [" ".join(e.text for e in rec.transcribe(wav, sample_rate)) for wav in recordings]

    a, b = texts(rec_a), texts(rec_b)
    return TranscriptParity(
        texts_a=a, texts_b=b,
        cer_a=None if refs is None else cer(refs, a).rate,
        cer_b=None if refs is None else cer(refs, b).rate,
        cer_b_vs_a=cer(a, b).rate,
        identical=sum(x == y for x, y in zip(a, b)),
    )
