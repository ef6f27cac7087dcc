"""Streaming recognition: incremental features, chunked encoder, a token decoder, endpointing.

The token decoder of a stream (greedy CTC, or beam search over the ASR pieces or the phone head)
lives behind a small seam in `mtspeech/streaming/decoders.py`, a stream's state and its events in
`stream.py`; this module owns the rest. `mtspeech.decoding.loader.load_recognizer` builds one
from a checkpoint (the one way every entry point does).

`StreamingRecognizer` owns no thread and no socket. A caller (the server's batcher, the local
client, a test) drives it:

    rec = StreamingRecognizer(model, tokenizer)
    s = rec.new_stream(sample_rate=8000)  # decoder=: a name in rec.decoders
    rec.accept(s, samples)              # any chunk size, any rate (resampled to the model's)
    while rec.ready(s):                 # one full encoder window buffered?
        rec.step([s])                   # batch as many ready streams as you like
    rec.finish(s)                       # flush the last partial chunk
    for event in rec.events(s): ...     # PartialEvent / FinalEvent

Frame arithmetic (docs/interfaces.md; `rec.geometry`, the model's `FrameGeometry`): an encoder
chunk of `c` output frames reads a window of 4c+3 feature frames and the next chunk starts 4c
frames later, so chunk k reads frames [4ck, 4ck + 4c + 3). Every stream keeps only the samples and feature frames it has not consumed
yet (`mtspeech/streaming/features.py`, which featurizes only what a window needs), plus a
fixed-size encoder cache, so memory stays flat however long a stream runs.

`accept` rejects (ValueError) any chunk with a non-finite sample or one beyond
`MAX_ABS_SAMPLE`, before the chunk touches the stream, so the stream goes on as if it never
came. With `endpointing=False` pauses never end an utterance, but the length limit (rule 3)
still does: a partial never carries more than one `rule3_max_utterance_s` window.

Thread model: `accept`/`ready` may run on one thread while `step`/`finish` of the *same*
stream run on another (the server's event loop and its executor); the stream's `FeatureBuffer`
and a per-stream lock on its events guard what they share. Two `step` calls must never hold the
same stream at once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import weakref
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import numpy as np
import torch

from mtspeech.data.resample import check_samples
from mtspeech.encoders.cache import CacheUpdate
from mtspeech.streaming.endpoint import EndpointConfig, Endpointer
from mtspeech.streaming.biased_beam import BiasCache
from mtspeech.streaming.decoders import BeamDecoder, GreedyDecoder, TokenDecoder
from mtspeech.streaming.hotwords import parse_hotwords
from mtspeech.streaming.encoder import (  # noqa: F401 (phone_task, vad_task re-exported)
    AttributeHeads, CachePool, ChunkOutput, EncoderStep, TorchEncoderStep, asr_task, check_encoder_step, phone_task,
    speaker_frames, step_update, vad_task)
from mtspeech.streaming.features import featurize
from mtspeech.streaming.speakers import SpeakerTurnConfig, label_final, new_tracker
from mtspeech.streaming.stream import Event, FinalEvent, PartialEvent, SpeechActivityEvent, Stream

log = logging.getLogger(__name__)


class TokenTable(Protocol):
    """What the recognizer needs from a tokenizer (mtspeech.text.tokenizer.Tokenizer fits)."""

    blank_id: int

    def id_to_piece(self, i: int) -> str: ...


@dataclass(frozen=True)
class StreamingConfig:
    """Chunking and endpointing of the streaming recognizer.

    `chunk_frames` counts encoder frames (40 ms each); `left_chunks` bounds the attention
    cache to `chunk_frames * left_chunks` frames (streaming needs a finite cache, so no None).
    """

    chunk_frames: int = 8
    left_chunks: int = 16
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)

    def __post_init__(self) -> None:
        if self.chunk_frames < 1:
            raise ValueError(f"streaming.chunk_frames={self.chunk_frames}: expected >= 1")
        if self.left_chunks < 1:
            raise ValueError(f"streaming.left_chunks={self.left_chunks}: expected >= 1")


# ----------------------------------------------------------------------------- the recognizer


class StreamingRecognizer:
    """Batched streaming decoding of a `MultiTaskModel`'s ASR (CTC) and VAD heads.

    `model` needs `.features(wav (B,S), wav_lens (B,)) -> (feats (B,T,F), feat_lens (B,))`,
    `.encoder` (`init_cache`, `forward_chunk`, `subsampling`), `.tasks[name]` and the name
    of its ASR task (`asr_task`). The VAD head, if any, is the task whose role is
    `Role.SPEECH_ACTIVITY`; the phone head, if any, the one whose role is `Role.PHONES`.

    `decoders`: token decoders by name (`mtspeech.streaming.decoders`), besides "greedy", which
    is always there; `default_decoder` is what `new_stream` uses unless told otherwise.
    `encoder_step`: what runs the encoder chunk and the heads (`mtspeech.streaming.encoder`;
    default: PyTorch on the model, `mtspeech.export.runtime.OnnxEncoderStep` runs onnxruntime).
    Features and token decoding stay in PyTorch / Python either way.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: TokenTable,
                 config: StreamingConfig | None = None, device: str | torch.device | None = None,
                 decoders: dict[str, TokenDecoder] | None = None, default_decoder: str = "greedy",
                 encoder_step: EncoderStep | None = None) -> None:
        self.config = config or StreamingConfig()
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        self.tokenizer = tokenizer
        self.asr = asr_task(model)
        self.vad = vad_task(model)
        self.phones = phone_task(model)
        self.speaker = speaker_frames(model)  # its frames, pooled by a stream's SpeakerTracker
        self.encoder_step = encoder_step or TorchEncoderStep(
            model, self.config.chunk_frames, self.config.left_chunks, AttributeHeads(self))
        check_encoder_step(self.encoder_step, self.config.chunk_frames, self.config.left_chunks, model)
        self._caches = CachePool(self.encoder_step.init_cache)
        if self.config.endpoint.mode == "vad" and self.vad is None:
            log.warning("model has no VAD task; endpointing falls back to CTC blanks (mode 'blank')")
        self.geometry = model.geometry  # sample rate, hop, window, subsampling: every frame number below
        # A chunk of c encoder frames reads `window_frames` (4c+3) feature frames; the next
        # starts `stride_frames` (4c) later. One encoder frame lasts `frame_shift_s`.
        self.window_frames, self.stride_frames = self.geometry.chunk_window(self.config.chunk_frames)
        self.frame_shift_s = self.geometry.frame_shift_s
        self.decoders: dict[str, TokenDecoder] = {
            "greedy": GreedyDecoder(tokenizer, tokenizer.blank_id, self.frame_shift_s), **(decoders or {})}
        for name, dec in self.decoders.items():
            if dec.head == "phones" and self.phones is None:
                raise ValueError(f"decoder {name!r} reads a phone head, but the model has none")
        if default_decoder not in self.decoders:
            raise ValueError(f"default_decoder={default_decoder!r}: not among {sorted(self.decoders)}")
        self.default_decoder = default_decoder
        self._biased = BiasCache()  # hotword lists' biased decoders, shared by streams sending the same list

    def with_encoder_step(self, encoder_step: EncoderStep) -> "StreamingRecognizer":
        """The same recognizer (model, tokenizer, config, decoders) running `encoder_step`
        instead (e.g. `mtspeech.export.runtime.OnnxEncoderStep`); streams are not shared."""
        decoders = {k: v for k, v in self.decoders.items() if k != "greedy"}
        return StreamingRecognizer(self.model, self.tokenizer, self.config, decoders=decoders,
                                   default_decoder=self.default_decoder, encoder_step=encoder_step)

    @property
    def uses_vad(self) -> bool:
        return self.config.endpoint.mode == "vad" and self.vad is not None

    # -- the stream API -----------------------------------------------------------------------

    def new_stream(self, sample_rate: int | None = None, endpointing: bool = True,
                   interim: bool = True, decoder: str | None = None,
                   endpoint: EndpointConfig | None = None, speech_activity: bool = False,
                   speaker_turns: SpeakerTurnConfig | None = None,
                   enrolled: Mapping[str, Sequence[float]] | None = None,
                   hotwords: Sequence[tuple[str, float]] = ()) -> Stream:
        """A fresh stream for audio at `sample_rate` Hz (default: the model's), decoded by `decoder` (a name in
        `self.decoders`; default `self.default_decoder`). `endpoint`: this stream's endpoint
        rules (default `self.config.endpoint`); `speech_activity`: also emit the VAD head's
        per-frame p(speech) as a `SpeechActivityEvent` per chunk (needs a VAD head);
        `speaker_turns`: label finals with speakers and emit `SpeakerChangeEvent`s
        (`mtspeech/streaming/speakers.py`; `enrolled`: name → reference embedding); `hotwords`:
        (phrase, boost) pairs the beam decoders favour (`mtspeech/streaming/hotwords.py`).
        Raises ValueError for settings this recognizer cannot honour, naming them."""
        if sample_rate is None:
            sample_rate = self.geometry.sample_rate
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate={sample_rate!r}: expected a positive integer (Hz)")
        decoder = decoder or self.default_decoder
        if decoder not in self.decoders:
            raise ValueError(f"decoder {decoder!r} is not available here; this recognizer has "
                             f"{sorted(self.decoders)}")
        token_decoder = self.bias(decoder, hotwords) if hotwords else self.decoders[decoder]
        endpoint = endpoint or self.config.endpoint
        tracker = None if speaker_turns is None else new_tracker(
            self.speaker, self.encoder_step.roles, self.frame_shift_s, speaker_turns, enrolled)
        if endpoint.mode == "vad" and not self.uses_vad:  # no VAD head: blanks decide (and no hangover)
            endpoint = dataclasses.replace(endpoint, mode="blank")
        if not endpointing:
            # Pauses (rule 2) never end the utterance, but rule 3 still bounds it and rule 1 still
            # drops silence: one endless utterance would re-render an ever longer partial per chunk.
            endpoint = dataclasses.replace(endpoint, rule2_trailing_silence_s=math.inf)
        row = self._caches.acquire()
        stream = Stream(sample_rate, endpointing, interim, row, token_decoder,
                        Endpointer(endpoint, self.frame_shift_s), self.geometry)
        # The row returns to the pool when the stream finishes, or is dropped unfinished.
        stream.release_cache = weakref.finalize(stream, self._caches.release, row)
        stream.speech_activity = speech_activity and self.vad is not None
        stream.speakers = tracker
        return stream

    def bias(self, decoder: str | None, hotwords: Sequence[tuple[str, float]]) -> TokenDecoder:
        """Decoder `decoder` (default: the default one) biased to `hotwords`, built or taken from
        the cache of recent lists. Safe on any thread: a server builds a list off its event loop
        (the G2P model may spell up to `MAX_NEW_WORDS` words), then `new_stream` finds it built.
        Raises ValueError for a decoder that cannot be biased or a list it cannot honour."""
        decoder = decoder or self.default_decoder
        base = self.decoders.get(decoder)
        if not isinstance(base, BeamDecoder):
            raise ValueError(f"hotwords need a beam decoder ('beam' or 'phones'); decoder {decoder!r} cannot "
                             f"be biased (this recognizer has {sorted(self.decoders)})")
        return self._biased.get(base, parse_hotwords(hotwords))

    def accept(self, stream: Stream, samples: np.ndarray | torch.Tensor) -> None:
        """Append mono float samples (N,) at the stream's sample rate (any N).

        Raises ValueError, leaving the stream as it was, if a sample is NaN, infinite or beyond
        `MAX_ABS_SAMPLE` in magnitude.
        """
        if stream.finished:
            raise ValueError(f"stream {stream.id} is finished; it accepts no more audio")
        if isinstance(samples, torch.Tensor):
            samples = samples.detach().cpu().numpy()
        x = np.asarray(samples)
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
        if x.ndim != 1:
            raise ValueError(f"samples of shape {x.shape}: expected mono (N,)")
        # Checked in the caller's precision, before the resampler sees (and keeps) any of it.
        check_samples(x)
        x = x.astype(np.float32)  # a copy: the stream keeps it until decoded, the caller may reuse x
        try:
            stream.audio.push(x)
        except ValueError as e:
            raise ValueError(f"stream {stream.id}: {e}") from e

    def ready(self, stream: Stream) -> bool:
        """Whether one full encoder window (4c+3 feature frames) is buffered."""
        return not stream.finished and stream.audio.frames_available() >= self.window_frames

    @torch.inference_mode()
    def step(self, streams: Sequence[Stream]) -> None:
        """Decode one chunk of every stream in `streams`, batched (all must be `ready`)."""
        if not streams:
            return
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("step() got the same stream twice")
        for s in streams:
            if not self.ready(s):
                raise ValueError(f"stream {s.id} is not ready (needs {self.window_frames} feature frames)")
        self._featurize(streams)
        x = torch.stack([s.audio.window(self.window_frames) for s in streams])  # (B, 4c+3, F)
        for s in streams:
            s.audio.advance(self.stride_frames)
        self._step_rows(streams, x)

    def _step_rows(self, streams: Sequence[Stream], x: torch.Tensor, chunk_lens: torch.Tensor | None = None) -> None:
        """Run the encoder on one window per stream (x (B, N, F); `chunk_lens`: real frames per
        row when rows are right-padded) with the streams' caches, then decode its output."""
        rows = [s.cache_row for s in streams]
        out, new = step_update(self.encoder_step, x, self._caches.take(rows), self._roles(streams), chunk_lens)
        if isinstance(new, CacheUpdate):
            self._caches.apply(rows, new)
        else:
            self._caches.put(rows, new)
        self._decode_frames(streams, out)

    def finish(self, stream: Stream) -> None:
        """End of audio: decode what is buffered (full chunks, then the last partial one)."""
        self.finish_many([stream])

    @torch.inference_mode()
    def finish_many(self, streams: Sequence[Stream]) -> None:
        """`finish` for several streams in batched steps: their full windows, then every
        stream's last, shorter window in one step (rows right-padded, `chunk_lens` per row).
        A server ends many short utterances a second; one unbatched step each cost more than
        all the batched steps of its live streams (benchmarks/README.md, "Server load")."""
        streams = [s for s in dict.fromkeys(streams) if not s.finished]
        for s in streams:
            s.audio.flush()
        while ready := [s for s in streams if self.ready(s)]:
            self.step(ready)
        self._featurize(streams)  # not ready: each rest is less than one window
        rests = [s.audio.take_rest() for s in streams]
        # Fewer than 7 frames give no encoder output ((T-1)//2-1)//2 <= 0: nothing to decode.
        last = [(s, r) for s, r in zip(streams, rests) if r is not None and r.shape[0] >= 7]
        if last:
            lens = torch.tensor([r.shape[0] for _, r in last], dtype=torch.long)
            x = torch.zeros(len(last), int(lens.max()), last[0][1].shape[1], dtype=last[0][1].dtype)
            for row, (_, r) in enumerate(last):
                x[row, : lens[row]] = r
            self._step_rows([s for s, _ in last], x, None if bool((lens == lens[0]).all()) else lens)
        for s in streams:
            s.finished = True
            s.release_cache()
            self._finalize(s, "eos")

    def cache_of(self, stream: Stream):
        """A copy of the stream's encoder cache (`EncoderCache`, batch 1); for tests and debugging."""
        return self._caches.take([stream.cache_row])

    def events(self, stream: Stream) -> list[Event]:
        """Events produced since the last call (partials and finals, in order)."""
        return stream.drain_events()

    def transcribe(self, samples: np.ndarray | torch.Tensor, sample_rate: int | None = None,
                   endpointing: bool = True, decoder: str | None = None,
                   hotwords: Sequence[tuple[str, float]] = ()) -> list[FinalEvent]:
        """Decode a whole recording at `sample_rate` Hz (default: the model's) through the
        streaming path (single stream; `hotwords` as `new_stream`'s); the finals."""
        s = self.new_stream(sample_rate, endpointing=endpointing, interim=False, decoder=decoder, hotwords=hotwords)
        self.accept(s, samples)
        while self.ready(s):
            self.step([s])
        self.finish(s)
        return [e for e in self.events(s) if isinstance(e, FinalEvent)]

    # -- internals ----------------------------------------------------------------------------

    def _featurize(self, streams: Sequence[Stream]) -> None:
        """Featurize what each stream's next window lacks (one batched fbank call)."""
        featurize([s.audio for s in streams], self.window_frames, self.model.features, self.device)

    def _roles(self, streams: Sequence[Stream]) -> tuple[str, ...]:
        """The heads a step of `streams` needs: ASR always (blank endpointing, rule 1), the phone
        head for phone decoders, VAD for endpointing or an activity display."""
        roles = ["asr"]
        if any(s.decoder.head == "phones" for s in streams):
            roles.append("phones")
        speakers = any(s.speakers is not None for s in streams)
        if self.vad is not None and (self.uses_vad or speakers or any(s.speech_activity for s in streams)):
            roles.append("vad")
        if speakers:
            roles.append("speaker")
        return tuple(roles)

    def _decode_frames(self, streams: Sequence[Stream], out: ChunkOutput) -> None:
        """Advance decoding + endpointing on one step's head logits (`out`, see `_roles`).

        Each stream's token decoder gets its head's log-probs in contiguous pieces, cut where
        an endpoint rule fires. Rule 1 ("nothing decoded") asks whether the decoder's head had a
        non-blank argmax in the utterance: for greedy exactly "it emitted a token", and cheap
        for every decoder (a beam search is not asked for its hypothesis every frame).
        """
        row_frames = out.lens.tolist()  # rows of a last, padded window may have fewer frames
        # (B, c, V) log-probs of the token heads this batch's decoders read (see `_roles`), and
        # their argmax: torch once for the batch, then numpy per stream, because every torch
        # call releases and retakes the GIL, which under load waits up to 5 ms for other threads
        heads = {k: out.logits[k].float().log_softmax(-1).cpu().numpy() for k in ("asr", "phones")
                 if k in out.logits}
        best = {k: v.argmax(-1) for k, v in heads.items()}
        speech = None  # (B, c) p(speech), when endpointing or an activity display needs it
        if "vad" in out.logits:
            speech = self.vad.speech_probs(out.logits["vad"]).float().cpu().numpy()
        if self.uses_vad:
            nonspeech = speech < self.config.endpoint.speech_threshold
        else:
            nonspeech = best["asr"] == self.tokenizer.blank_id
        for b, s in enumerate(streams):
            frames = row_frames[b]
            if s.speech_activity:
                self._emit(s, SpeechActivityEvent(round(s.frames_done * self.frame_shift_s, 3), self.frame_shift_s,
                                                  tuple(round(float(p), 3) for p in speech[b, :frames])))
            if s.speakers is not None:  # before the frames below, whose finals it labels
                s.speakers.push(out.logits["speaker"][b, :frames], None if speech is None else
                                speech[b, :frames] >= self.config.endpoint.speech_threshold, s.frames_done)
                self._emit(s, *s.speakers.changes())
            log_probs = heads[s.decoder.head][b, :frames]  # (c, V)
            nonblank = (best[s.decoder.head][b, :frames] != s.decoder.blank_id).tolist()
            pushed = 0  # frames of this chunk given to the decoder
            for t in range(frames):
                s.utterance_has_tokens |= nonblank[t]
                s.endpointer.update(bool(nonspeech[b, t]))
                s.frames_done += 1
                # With endpointing off the stream's endpointer has no rule 2 (see new_stream).
                rule = s.endpointer.check(has_words=s.utterance_has_tokens)
                if rule is not None:
                    s.utterance.push(log_probs[pushed : t + 1], s.frames_done - (t + 1 - pushed))
                    pushed = t + 1
                    self._finalize(s, rule)
            if pushed < frames:
                s.utterance.push(log_probs[pushed:], s.frames_done - (frames - pushed))
            self._maybe_partial(s)

    def _maybe_partial(self, s: Stream) -> None:
        """Emit a partial if the hypothesis changed. The stable prefix sent is never retracted:
        it grows when the decoder's stable words extend it, and while the decoder disagrees with
        it (beam only) it stays as sent."""
        if not s.interim:
            return
        p = s.utterance.partial()
        if p is None or p.key == s.last_partial_key:
            return
        s.last_partial_key = p.key
        n = len(s.stable_words)
        if p.stable > n and p.words[:n] == s.stable_words:
            s.stable_words = p.words[: p.stable]
        stable = " ".join(s.stable_words)
        unstable = " ".join(p.words[len(s.stable_words):]) if p.words[: len(s.stable_words)] == s.stable_words \
            else " ".join(p.words[n:])
        text = " ".join(x for x in (stable, unstable) if x)
        self._emit(s, PartialEvent(text, stable, unstable))

    def _finalize(self, s: Stream, reason: str) -> None:
        """Close the current utterance (emit a final if it has words) and reset the decoder."""
        result = s.utterance.end()
        words = result.words
        if s.speakers is not None:  # an utterance's end is a pause: a window ends there
            s.speakers.end_segment()
            self._emit(s, *s.speakers.changes())
        if words:
            final = FinalEvent(
                text=" ".join(w.word for w in words),
                start=words[0].start,
                end=words[-1].end,
                words=tuple(words),
                tokens=result.tokens,
                reason=reason,
                detected_at=round(s.frames_done * self.frame_shift_s, 3),
            )
            self._emit(s, final if s.speakers is None else label_final(final, s.speakers))
        s.new_utterance()

    def _emit(self, s: Stream, *events: Event) -> None:
        s.emit_all(list(events))
