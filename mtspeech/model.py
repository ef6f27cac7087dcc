"""MultiTaskModel: features + shared encoder + {name: task}.

Features run inside the model, on its device, so training, evaluation and streaming share
one filterbank and one normalisation. The model never names a task: it routes encoder
layer `task.layer` to each task and returns their losses. A task with
`intermediate_layers` (CTC) also gets its head's logits at those layers for its loss. Heads
that condition the encoder (`encoder.add_conditioner`) have already run inside it: their
logits come back in `EncoderOutput.head_logits` and are reused, not computed twice.
"""

from __future__ import annotations

import torch
from torch import nn

from mtspeech.data.features import Fbank, GlobalCMVN, SpecAugment
from mtspeech.data.geometry import FrameGeometry
from mtspeech.encoders import EncoderOutput
from mtspeech.tasks.layer_mix import LEARNED, task_input


class MultiTaskModel(nn.Module):
    """Waveforms → log-mel → encoder → every task's logits and loss.

    Args:
        fbank: batched log-mel front end.
        cmvn: global mean/variance normalisation fitted on the training set.
        specaugment: masking applied in train mode only (None: off).
        encoder: any registered encoder (returns every layer's output).
        tasks: name → task module; `asr_task` names the main (transcription) task.
    """

    def __init__(
        self,
        fbank: Fbank,
        cmvn: GlobalCMVN,
        encoder: nn.Module,
        tasks: dict[str, nn.Module],
        asr_task: str,
        specaugment: SpecAugment | None = None,
    ):
        super().__init__()
        if asr_task not in tasks:
            raise ValueError(f"main task {asr_task!r} is not among the tasks {sorted(tasks)}")
        self.fbank = fbank
        self.cmvn = cmvn
        self.specaugment = specaugment
        self.encoder = encoder
        self.tasks = nn.ModuleDict(tasks)
        self.asr_task = asr_task

    @property
    def geometry(self) -> FrameGeometry:
        """Sample rate, hop, window and the encoder's subsampling: every frame count, frame
        shift and chunk window of this model follows from them."""
        return FrameGeometry.of(self.fbank.cfg, self.encoder)

    def features(self, wav: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav (B,S), wav_lens (B,) → normalised log-mel (B,T,F), feat_lens (B,)."""
        feats, feat_lens = self.fbank(wav, wav_lens)
        feats = self.cmvn(feats)
        if self.specaugment is not None and self.training:
            feats = self.specaugment(feats, feat_lens)
        return feats, feat_lens

    def encode(
        self,
        wav: torch.Tensor,
        wav_lens: torch.Tensor,
        chunk_frames: int | None = None,
        left_chunks: int | None = None,
    ) -> EncoderOutput:
        """wav (B,S) → EncoderOutput with every layer (B,T',D) and lens (B,)."""
        feats, feat_lens = self.features(wav, wav_lens)
        return self.encoder(feats, feat_lens, chunk_frames=chunk_frames, left_chunks=left_chunks)

    def task_logits(self, enc: EncoderOutput) -> dict[str, torch.Tensor]:
        """Every task's logits from its own encoder layer (or its learned mix of all layers)."""
        return {name: task(task_input(task, enc), enc.lens) if task.layer == LEARNED
                else self._logits_at(enc, name, task.layer) for name, task in self.tasks.items()}

    def _logits_at(self, enc: EncoderOutput, name: str, layer: int) -> torch.Tensor:
        """Task `name`'s head on encoder layer `layer`: the conditioning pass's logits when
        the head conditioned that layer (same head, same input), else computed here."""
        index = layer % len(enc.layers)
        if (name, index) in enc.head_logits:
            return enc.head_logits[(name, index)]
        return self.tasks[name](enc.task_layers(name)[index], enc.lens)  # its tower, if it has one

    def forward(
        self,
        wav: torch.Tensor,
        wav_lens: torch.Tensor,
        targets: dict,
        chunk_frames: int | None = None,
        left_chunks: int | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Returns (losses by task, logits by task, encoder lens (B,)).

        A task whose targets are absent from `targets` contributes no loss.
        """
        enc = self.encode(wav, wav_lens, chunk_frames, left_chunks)
        logits = self.task_logits(enc)
        return self.losses(enc, logits, targets), logits, enc.lens

    def losses(self, enc: EncoderOutput, logits: dict[str, torch.Tensor], targets: dict) -> dict[str, torch.Tensor]:
        """Each task's loss on its logits (`task_logits(enc)`); tasks absent from `targets` have none."""
        losses = {}
        for name, task in self.tasks.items():
            if name not in targets:
                continue
            inter = [self._logits_at(enc, name, k) for k in getattr(task, "intermediate_layers", ())]
            extra = {"intermediate": inter} if inter else {}
            losses[name] = task.loss(logits[name], enc.lens, targets[name], **extra)
        return losses

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task shares (the encoder): what gradient surgery operates on."""
        return [p for p in self.encoder.parameters() if p.requires_grad]
