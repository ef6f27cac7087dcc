"""`load_recognizer`: a checkpoint + a `DecodingConfig` + a backend → a `StreamingRecognizer`.

The one way every entry point builds its decoders, so the same checkpoint and the same flags
give the same decoder everywhere: `mtspeech serve`, `mtspeech transcribe --model`, `mtspeech
evaluate` (which decodes whole utterances with `batch_decoder` of the recognizer's decoders:
the same search with the same settings, batched), `mtspeech embed-lm` (through the same
`--lm auto`), the ONNX parity benchmark and the other benchmarks.

    rec = load_recognizer("final.pt", DecodingConfig(decoder="auto"), backend="torch")
    rec.decoders            # {"greedy": ..., "beam": ..., "phones": ...} as the model and LM allow
    rec.default_decoder     # what `decoder` resolved to

`recognizer_with_weights(rec, weights, backend, source=...)` is the same recognizer over other
weights of the same model (an adapted voice: `mtspeech serve --adapted`).

Backends (what runs the encoder chunk and the heads; features and token decoding are the same):
`torch` (the full-chunk step traced to one TorchScript graph, eager if the trace fails),
`torch-eager`, `onnx` (the export under onnxruntime: `onnx_dir`, or exported at start; `int8`).

This module sits on top of the inference stack: it imports the checkpoint, streaming/ and
export/, and nothing below imports it.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Mapping

import torch

from mtspeech.decoding.config import BACKENDS, DecodingConfig, DecodingError
from mtspeech.decoding.ctc import BeamSearchDecoder, GreedyDecoder, PhoneTable, lexicon_for_lm
from mtspeech.streaming.decoders import BeamDecoder, TokenDecoder
from mtspeech.streaming.encoder import asr_task, phone_task
from mtspeech.streaming.recognizer import StreamingConfig, StreamingRecognizer

log = logging.getLogger(__name__)


def phone_lexicon_for_lm(lm: Path, phones: list[str], out_path: Path,
                         spellings: dict[str, tuple[str, ...]] | None = None) -> Path | None:
    """The phone-lexicon word decoder's lexicon: every word of the ARPA LM `lm` spelled in the
    phone head's labels through CMUdict (`lm.build_phone_lexicon`), written to `out_path`. A
    word needs only be heard, never spelled, which on a closed vocabulary with little text
    beats spelling it from sub-word units. None (with a warning) for a non-ARPA LM: its
    vocabulary is the lexicon, and only ARPA text lists it. `spellings`: phones of words added
    by `--lexicon-extra` (CMUdict's or the G2P model's, or the file's own)."""
    from mtspeech.decoding.lm import ArpaLM, build_phone_lexicon

    if lm.suffix != ".arpa":
        log.warning("no 'phones' decoder: it needs an ARPA LM (its vocabulary is the lexicon), got %s", lm)
        return None
    return build_phone_lexicon(ArpaLM.load(lm).vocab, phones, out_path, spellings=spellings)


def build_decoders(model: torch.nn.Module, tokenizer, frame_shift_s: float,
                   decoding: DecodingConfig = DecodingConfig(), lm: str | Path | None = None,
                   work_dir: str | Path | None = None) -> dict[str, TokenDecoder]:
    """The beam decoders a model and an LM allow (greedy the recognizer always has).

    "beam": over the ASR pieces; lexicon-free without `lm` (a file, already resolved), else
    with the LM through a piece lexicon spelling its vocabulary. "phones": only with an ARPA
    `lm` and a phone head: the LM's words spelled in phones (`phone_lexicon_for_lm`), written
    to `work_dir` (default: next to the LM). `decoding.lexicon_extra`: its words join the LM
    (`vocabulary.extend_arpa`, written to `work_dir` too) and so both lexicons.
    """
    options = dict(beam_size=decoding.beam_size, lm_weight=decoding.lm_weight, word_score=decoding.word_score,
                   beam_threshold=decoding.beam_threshold)
    spellings = None
    if decoding.lexicon_extra is not None:
        if lm is None:
            raise DecodingError("--lexicon-extra adds words to the word LM's lexicons: pass --lm ARPA or --lm auto")
        lm, spellings = _with_extra_words(Path(lm), decoding.lexicon_extra, Path(work_dir or Path(lm).parent))
    piece_lexicon = None if lm is None else lexicon_for_lm(Path(lm), tokenizer)
    out = {"beam": BeamDecoder(tokenizer, "asr", frame_shift_s, lm=lm, lexicon=piece_lexicon, **options)}
    phones = phone_task(model)
    if lm is not None and phones is not None:
        lm = Path(lm)
        lexicon = phone_lexicon_for_lm(lm, phones.phones, Path(work_dir or lm.parent) / f"{lm.stem}.phones.lexicon.txt",
                                       spellings)
        if lexicon is not None:
            out["phones"] = BeamDecoder(PhoneTable(phones.phones), "phones", frame_shift_s, lm=lm,
                                        lexicon=lexicon, **options)
    return out


def _with_extra_words(lm: Path, extra: str, work_dir: Path) -> tuple[Path, dict[str, tuple[str, ...]]]:
    """The LM with `--lexicon-extra`'s words added (`work_dir/<lm>.extra.arpa`) and their phones.

    A word the G2P model cannot spell is refused here, at start, naming the word."""
    from mtspeech.data.g2p import G2PError, pronounce
    from mtspeech.decoding.vocabulary import extend_arpa, read_lexicon_extra

    if lm.suffix != ".arpa":
        raise DecodingError(f"--lexicon-extra needs an ARPA LM (its vocabulary is the lexicon), got {lm}")
    try:
        words = read_lexicon_extra(extra)
        spellings = {w: phones or pronounce(w) for w, phones in words.items()}
    except (ValueError, G2PError) as e:
        raise DecodingError(str(e)) from e
    work_dir.mkdir(parents=True, exist_ok=True)
    return extend_arpa(lm, list(words), work_dir / f"{lm.stem}.extra.arpa"), spellings


def batch_decoder(decoder: TokenDecoder, table) -> GreedyDecoder | BeamSearchDecoder:
    """The offline decoder of whole batches with a streaming decoder's own settings (its
    `options`) over the label table `table`: what `mtspeech evaluate` decodes with."""
    if not decoder.options:
        return GreedyDecoder(table)
    return BeamSearchDecoder(table, **decoder.options)


def load_recognizer(checkpoint: str | Path, decoding: DecodingConfig | None = None, backend: str = "torch", *,
                    streaming: StreamingConfig | None = None, device: str = "cpu",
                    onnx_dir: str | Path | None = None, int8: bool = False,
                    work_dir: str | Path | None = None) -> StreamingRecognizer:
    """A `StreamingRecognizer` for `checkpoint` with the decoders `decoding` asks for.

    `decoding.lm == "auto"`: the LM embedded in the checkpoint (`mtspeech embed-lm`), else an
    n-gram of the training transcripts named in its config (that needs the manifest on disk),
    written to `work_dir` (default: a temporary folder); the phone lexicon goes there too.
    `decoder == "auto"` without an `lm` uses the embedded LM if there is one, else greedy.
    Raises DecodingError for settings that cannot work (checked before the model loads where
    possible) and `checkpoint.CheckpointError` for an unreadable checkpoint.
    """
    from mtspeech.checkpoint import load_model
    from mtspeech.decoding.embedded_lm import has_embedded_lm, training_transcripts_lm

    decoding = decoding or DecodingConfig()
    if backend not in BACKENDS:
        raise DecodingError(f"backend {backend!r}: choose one of {BACKENDS}")
    if backend != "onnx" and (onnx_dir is not None or int8):
        raise DecodingError("--int8 and --onnx-dir apply to --backend onnx only")
    lm = decoding.lm
    if lm not in (None, "auto") and not Path(lm).is_file():
        raise DecodingError(f"LM file {lm} does not exist: pass an ARPA file or 'auto'")
    if decoding.lexicon_extra is not None and not Path(decoding.lexicon_extra).is_file():
        raise DecodingError(f"--lexicon-extra {decoding.lexicon_extra}: no such file")
    checkpoint = Path(checkpoint)
    model, exp, _labels = load_model(checkpoint)
    model.to(device).eval()
    if decoding.decoder == "auto" and lm is None and has_embedded_lm(checkpoint):
        lm = "auto"
    if lm == "auto":
        work_dir = Path(work_dir or tempfile.mkdtemp(prefix="mtspeech-lm-"))
        lm = training_transcripts_lm(exp, work_dir, decoding.lm_order, checkpoint)
    if decoding.lexicon_extra is not None and lm is None:
        raise DecodingError("--lexicon-extra adds words to the word LM's lexicons: pass --lm ARPA or --lm auto "
                            "(or embed one with `mtspeech embed-lm`)")
    tokenizer = _asr_tokenizer(model)
    decoders = {}
    if decoding.decoder not in ("greedy", "auto") or lm is not None:  # auto without an LM: greedy
        decoders = build_decoders(model, tokenizer, model.geometry.frame_shift_s, decoding, lm, work_dir)
    default = decoding.decoder
    if default == "auto":
        default = next(d for d in ("phones", "beam", "greedy") if d == "greedy" or d in decoders)
        log.info("decoder auto: streams default to %s", default)
    if default not in ("greedy", *decoders):
        raise DecodingError(f"decoder {default!r} is not possible with this model: it has no phone head")
    streaming = streaming or StreamingConfig()
    step = _encoder_step(model, checkpoint, backend, streaming, onnx_dir, int8)
    return StreamingRecognizer(model, tokenizer, streaming, device, decoders=decoders, default_decoder=default,
                               encoder_step=step)


def recognizer_with_weights(base: StreamingRecognizer, weights: Mapping[str, torch.Tensor], backend: str = "torch",
                            *, source: str | Path, int8: bool = False) -> StreamingRecognizer:
    """`base`'s recognizer (tokenizer, decoders, streaming config, device) over a copy of its model
    carrying `weights`, a state dict of the same architecture (an adapted model: `mtspeech adapt`),
    loaded strictly. Its encoder step is built for `backend` as `load_recognizer` builds one; with
    `onnx` it is exported now (from this copy; `source`, the weights' file, is what export.json
    names). The decoders are shared: they hold no stream state (`TokenDecoder.begin`)."""
    if backend not in BACKENDS:
        raise DecodingError(f"backend {backend!r}: choose one of {BACKENDS}")
    model = copy.deepcopy(base.model)
    try:
        model.load_state_dict(dict(weights), strict=True)
    except RuntimeError as e:  # missing or unexpected keys, another shape
        raise DecodingError(f"{source}: its weights do not fit the served model ({str(e)[:300]})") from None
    model.eval()
    step = _encoder_step(model, Path(source), backend, base.config, None, int8)
    decoders = {k: v for k, v in base.decoders.items() if k != "greedy"}
    return StreamingRecognizer(model, base.tokenizer, base.config, decoders=decoders,
                               default_decoder=base.default_decoder, encoder_step=step)


def _encoder_step(model, checkpoint: Path, backend: str, streaming: StreamingConfig, onnx_dir, int8: bool):
    """What runs the encoder chunk and heads for `backend`; None: the recognizer's own eager step."""
    if backend == "onnx":
        from mtspeech.export.runtime import onnx_step_for

        return onnx_step_for(model, checkpoint, streaming.chunk_frames, streaming.left_chunks, onnx_dir, int8)
    if backend == "torch":
        from mtspeech.streaming.traced import traced_or_eager

        step = traced_or_eager(model, streaming.chunk_frames, streaming.left_chunks)
        log.info("torch backend: %s streaming step", step.name)
        return step
    return None


def _asr_tokenizer(model: torch.nn.Module):
    """The ASR task's tokenizer (the task owns its label space)."""
    task = asr_task(model)
    try:
        return task.tokenizer
    except AttributeError as e:
        raise DecodingError(f"ASR task {getattr(task, 'name', 'asr')!r} has no tokenizer; cannot decode text "
                            f"({e})") from e
