"""CTC head + loss, configured twice: ASR on sentencepiece units and phones on ARPAbet.

One class, two label kinds:
  - `label: "text"` — units of a sentencepiece model trained on the training transcripts
    by `fit_labels` (id 0 is `<blank>`, the CTC blank). The label space embeds the model
    file's bytes, so a checkpoint decodes without the experiment folder.
  - `label: "phones"` — ARPAbet phones (`utt.phones`); the label space is the sorted
    phone set of the training manifest, id = index + 1, blank 0. An utterance with a phone
    outside that set has no representable label and is masked (`present=False`).

Hierarchy (all off by default, so older configs and checkpoints are unchanged):
  - `condition: true` — the task's posteriors at its layer (and at its intermediate layers)
    are projected and added to the input of the layer above (self-conditioned CTC, Nozaki &
    Komatsu 2021; hierarchical conditioning on phones, Higuchi et al. 2022). The encoder
    holds the mechanism (`mtspeech.encoders.conditioning`), so streaming and export use it.
  - `intermediate_layers: [2, 4]` — the same head (shared) also reads those layers, and the
    task's loss becomes `(1 - w)·L_top + w·mean_k L_k` with `w = intermediate_weight`
    (ESPnet's `interctc_weight`; Lee & Watanabe 2021 use w = 0.3, our default).

Loss normalisation: the summed CTC negative log-likelihood of the present utterances is
divided by their total number of target units (nats per unit). That puts CTC on the same
scale as per-utterance cross-entropy, so static task weights mean what they say, and long
utterances weigh in proportion to their length (as in a per-token mean).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtspeech.config import ConfigError
from mtspeech.tasks.base import Role, ScoringOptions, Targets, zero_loss
from mtspeech.tasks.ctc_scorers import PhoneScorer, TranscriptScorer
from mtspeech.tasks.layer_mix import LEARNED, LayerSpec
from mtspeech.tasks.registry import register_task

log = logging.getLogger(__name__)

LABEL_KINDS = ("text", "phones")


@dataclass(frozen=True)
class CTCConfig:
    """A CTC task. `vocab_size`/`model_type` apply to `label: text` only."""

    kind: str = "ctc"
    name: str = "asr"
    layer: LayerSpec = -1  # an encoder layer index, or "learned" (tasks/layer_mix.py)
    weight: float = 1.0
    label: str = "text"  # text | phones
    vocab_size: int = 256
    model_type: str = "unigram"  # sentencepiece model type
    proj_dim: int | None = None  # hidden width of an optional projection before the output layer
    dropout: float = 0.1
    condition: bool = False  # feed the posteriors to the layer above (see the module docstring)
    intermediate_layers: tuple[int, ...] = ()  # more layers the shared head reads, below `layer`
    intermediate_weight: float = 0.3  # w in (1 - w)·L_top + w·mean(L_intermediate)

    def __post_init__(self):
        if self.label not in LABEL_KINDS:
            raise ConfigError(f"tasks.{self.name}.label: {self.label!r} is not one of {LABEL_KINDS}")
        if not 0.0 <= self.intermediate_weight <= 1.0:
            raise ConfigError(f"tasks.{self.name}.intermediate_weight: {self.intermediate_weight} is not in [0, 1]")
        if len(set(self.intermediate_layers)) != len(self.intermediate_layers):
            raise ConfigError(f"tasks.{self.name}.intermediate_layers: {list(self.intermediate_layers)} repeats a layer")
        fixed = [k for k in ("intermediate_layers", "condition") if getattr(self, k)]
        if self.layer == LEARNED and fixed:
            # Intermediate losses and conditioning tie a head to fixed layers: no mix to learn there.
            raise ConfigError(f"tasks.{self.name}.layer: {LEARNED!r} cannot be combined with `{fixed[0]}`, which "
                              "reads fixed layers; give the task a layer index, or drop that key")

    @property
    def role(self) -> Role:
        """A transcript head on text pieces, a phones head on phones."""
        return Role.TRANSCRIPT if self.label == "text" else Role.PHONES

    def reading_layers(self, num_layers: int) -> tuple[int, list[int]]:
        """(the task's layer, its intermediate layers), as indices 0..num_layers-1.

        Raises ConfigError for a layer outside the encoder or an intermediate layer that is
        not below the task's own layer.
        """
        def index(layer: int, key: str) -> int:
            if not -num_layers <= layer < num_layers:
                raise ConfigError(f"tasks.{self.name}.{key}: layer {layer} is outside the encoder's {num_layers} "
                                  f"layers (0..{num_layers - 1}, or {-num_layers}..-1)")
            return layer % num_layers

        top = index(self.layer, "layer")
        inter = [index(k, "intermediate_layers") for k in self.intermediate_layers]
        above = [k for k, i in zip(self.intermediate_layers, inter) if i >= top]
        if above:
            raise ConfigError(f"tasks.{self.name}.intermediate_layers: {above} not below the task's layer "
                              f"{self.layer} (index {top}); intermediate layers lie under the one the task reads")
        return top, inter

    def conditioning_layers(self, num_layers: int) -> list[int]:
        """Layer indices whose posteriors feed the layer above (empty unless `condition`)."""
        if not self.condition:
            return []
        top, inter = self.reading_layers(num_layers)
        layers = sorted(i for i in [*inter, top] if i < num_layers - 1)
        if not layers:
            raise ConfigError(
                f"tasks.{self.name}.condition: the task reads layer {self.layer}, the encoder's top layer of "
                f"{num_layers}, and no intermediate layer: there is no layer above to condition. Set a lower "
                f"`layer`, add `intermediate_layers`, or `condition: false`")
        return layers


@register_task("ctc")
class CTCTask(nn.Module):
    """Projection (optional) + linear to the vocabulary; CTC loss with blank 0.

    Args:
        cfg: the task's `CTCConfig`.
        dim: width D of the encoder layer it reads.
        labels: what `fit_labels` returned (tokenizer or phone list).
    """

    Config = CTCConfig

    def __init__(self, cfg: CTCConfig, dim: int, labels: dict):
        super().__init__()
        if labels.get("label") != cfg.label:
            raise ValueError(
                f"task {cfg.name!r}: label space is for {labels.get('label')!r} but the config says "
                f"label={cfg.label!r}; refit the labels (fit_labels) for this config"
            )
        self.cfg = cfg
        self.name = cfg.name
        self.layer = cfg.layer
        self.role = cfg.role
        self.intermediate_layers = tuple(cfg.intermediate_layers)
        self.labels = labels
        self.too_short = 0  # utterances left out of the loss: too few frames for their labels
        self._tokenizer = None  # built lazily; dropped when pickled (see __getstate__)
        if cfg.label == "phones":
            self.phones: list[str] = list(labels["phones"])
            self._phone_ids = {p: i + 1 for i, p in enumerate(self.phones)}
            self.vocab_size = len(self.phones) + 1
        else:
            self.vocab_size = int(labels["vocab_size"])
        if cfg.proj_dim is None:
            self.proj = nn.Identity()
            out_in = dim
        else:
            self.proj = nn.Sequential(nn.Linear(dim, cfg.proj_dim), nn.GELU())
            out_in = cfg.proj_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(out_in, self.vocab_size)

    # ---- label space -------------------------------------------------------------------

    def attach(self, encoder: nn.Module) -> None:
        """Check the intermediate layers against `encoder` and give it this head's conditioners.

        Conditioning lives in the encoder (forward and forward_chunk alike) and shares the
        task's head, so streaming and export run it without knowing about tasks.
        """
        if self.layer == LEARNED:
            return  # the config refuses `learned` with intermediate layers or conditioning
        self.cfg.reading_layers(encoder.num_layers)  # validates the intermediate layers
        for layer in self.cfg.conditioning_layers(encoder.num_layers):
            encoder.add_conditioner(layer, self.name, self, self.vocab_size)

    @classmethod
    def fit_labels(cls, cfg: CTCConfig, train_utts: list, exp_dir: str | Path, data: Any = None) -> dict:
        """Phones: sorted phone set. Text: train sentencepiece into `exp_dir/<name>_spm.model`.

        Returns a JSON-able dict: `{"label": "phones", "phones": [...]}` or
        `{"label": "text", "tokenizer": path, "vocab_size": n, "model_b64": <model bytes>}`.
        """
        if cfg.label == "phones":
            phones = sorted({p for u in train_utts if u.phones is not None for p in u.phones})
            if not phones:
                raise ValueError(f"task {cfg.name!r}: no training utterance has phones")
            return {"label": "phones", "phones": phones}
        from mtspeech.text.tokenizer import Tokenizer, train_tokenizer

        texts = [u.text for u in train_utts if u.text]
        if not texts:
            raise ValueError(f"task {cfg.name!r}: no training utterance has a transcript")
        exp_dir = Path(exp_dir)
        exp_dir.mkdir(parents=True, exist_ok=True)
        path = Path(train_tokenizer(texts, str(exp_dir / f"{cfg.name}_spm"), cfg.vocab_size, cfg.model_type))
        tok = Tokenizer(path)
        if tok.blank_id != 0:
            raise ValueError(f"tokenizer {path} has blank id {tok.blank_id}; CTC needs 0")
        return {
            "label": "text",
            "tokenizer": str(path.resolve()),
            "vocab_size": int(tok.vocab_size),
            "model_b64": base64.b64encode(path.read_bytes()).decode("ascii"),
        }

    @property
    def tokenizer(self):
        """The sentencepiece `Tokenizer` (text tasks), rebuilt from the embedded model bytes."""
        if self.cfg.label != "text":
            raise AttributeError(f"task {self.name!r} predicts phones and has no tokenizer")
        if self._tokenizer is None:
            from mtspeech.text.tokenizer import Tokenizer

            if "model_b64" not in self.labels and "tokenizer" not in self.labels:
                # AttributeError, so hasattr() and module introspection (torch.jit) see "none"
                raise AttributeError(f"task {self.name!r} has no sentencepiece model in its labels")

            self._tokenizer = Tokenizer(_model_file(self.labels))
        return self._tokenizer

    def __getstate__(self):
        # Sent to DataLoader workers (spawn) with the module: the tokenizer is rebuilt there.
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        return state

    # ---- targets -----------------------------------------------------------------------

    def encode(self, utt: Any) -> list[int] | None:
        """One utterance's unit ids, or None when it has no (representable) label."""
        if self.cfg.label == "text":
            return None if utt.text is None else self.tokenizer.encode(utt.text)
        if utt.phones is None:
            return None
        try:
            return [self._phone_ids[p] for p in utt.phones]
        except KeyError as e:
            log.debug("utterance %s: phone %s not in the training phone set; masked", utt.id, e)
            return None

    def collate(self, utts: list) -> Targets:
        """Utterances → Targets(values (B,U) long padded with 0, lens (B,), present (B,))."""
        seqs = [self.encode(u) for u in utts]
        present = torch.tensor([s is not None for s in seqs], dtype=torch.bool)
        seqs = [s or [] for s in seqs]
        lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        values = torch.zeros(len(seqs), max(1, int(lens.max()) if len(seqs) else 1), dtype=torch.long)
        for i, s in enumerate(seqs):
            values[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return Targets(values=values, lens=lens, present=present)

    # ---- model -------------------------------------------------------------------------

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
        """h (B,T,D), h_lens (B,) → logits (B,T,V) (unnormalised; blank is index 0)."""
        return self.out(self.dropout(self.proj(h)))

    def loss(
        self,
        logits: torch.Tensor,
        h_lens: torch.Tensor,
        targets: Targets,
        intermediate: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """CTC NLL of present rows summed, divided by their number of target units.

        `intermediate`: the head's logits (B,T,V) at the intermediate layers; when given,
        returns `(1 - w)·L(logits) + w·mean_k L(intermediate_k)`, w = `intermediate_weight`.
        Rows whose encoder frames cannot hold their labels (fewer frames than labels plus
        adjacent repeats, which need a blank between them) are left out and counted in
        `too_short` (once, whatever the number of layers): their loss would be infinite.
        Computed in fp32 even under autocast.
        """
        idx = targets.present.nonzero(as_tuple=True)[0]
        if idx.numel():
            values, target_lens = targets.values[idx], targets.lens[idx]
            fits = h_lens[idx] >= target_lens + _adjacent_repeats(values, target_lens)
            if not bool(fits.all()):
                self.too_short += int((~fits).sum())
                idx, values, target_lens = idx[fits], values[fits], target_lens[fits]
        if idx.numel() == 0:
            return zero_loss(logits) + sum(zero_loss(x) for x in intermediate)

        def ctc(layer_logits: torch.Tensor) -> torch.Tensor:
            with torch.autocast(layer_logits.device.type, enabled=False):
                log_probs = layer_logits[idx].float().log_softmax(-1).transpose(0, 1)  # (T,B',V)
                nll = F.ctc_loss(log_probs, values, h_lens[idx], target_lens, blank=0, reduction="sum",
                                 zero_infinity=True)  # belt and braces: the guard above should catch all
            return nll / target_lens.sum().clamp(min=1)

        if not intermediate:
            return ctc(logits)
        w = self.cfg.intermediate_weight
        return (1.0 - w) * ctc(logits) + w * sum(ctc(x) for x in intermediate) / len(intermediate)

    # ---- decoding and scoring ----------------------------------------------------------

    @staticmethod
    def greedy_decode(logits: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
        """logits (B,T,V), lens (B,) → per row the best path with repeats merged, blanks dropped."""
        from mtspeech.alignment import greedy_tokens

        best = logits.argmax(-1).cpu()
        return [greedy_tokens(row[:n]) for row, n in zip(best, lens.cpu().tolist())]

    def decode_text(self, ids: list[int]) -> str:
        """Unit ids → text (sentencepiece detokenised) or space-separated phones."""
        if self.cfg.label == "text":
            return self.tokenizer.decode(list(ids))
        return " ".join(self.phones[i - 1] for i in ids if 0 < i <= len(self.phones))

    def scorer(self, options: ScoringOptions = ScoringOptions()) -> TranscriptScorer | PhoneScorer:
        """WER/CER of a transcript head, PER (and words, with `options.decode`) of a phone head."""
        if self.role is Role.TRANSCRIPT:
            return TranscriptScorer(self, options.decode)
        return PhoneScorer(self, options.decode)


def _model_file(labels: dict) -> str:
    """Path of the sentencepiece model: the embedded bytes, materialised once per content."""
    data = labels.get("model_b64")
    if data is None:
        return labels["tokenizer"]
    raw = base64.b64decode(data)
    path = Path(tempfile.gettempdir()) / f"mtspeech_spm_{hashlib.sha1(raw).hexdigest()[:16]}.model"
    if not path.exists() or path.read_bytes() != raw:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(raw)
        tmp.replace(path)  # atomic: concurrent workers never read a half-written file
    return str(path)


def _adjacent_repeats(values: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """values (B,U) label ids, lens (B,) → (B,) count of positions u < len with values[u] == values[u-1]."""
    same = values[:, 1:] == values[:, :-1]
    valid = torch.arange(1, values.shape[1], device=values.device)[None] < lens[:, None]
    return (same & valid).sum(1)
