"""Streaming recognition, in the three parts torchaudio's streaming pipelines split it into.

- features (`features.py`: a stream's `FeatureBuffer` (resampling to the model's rate, pending samples,
  unconsumed frames) and the batched incremental fbank, `featurize`),
- the encoder with its state (`encoder.py`: the encoder step, PyTorch or onnxruntime via
  `mtspeech.export.runtime`, and the `CachePool` of the streams' caches),
- the token side (`decoders.py`: greedy, beam over pieces, phones through the lexicon;
  `endpoint.py`: when an utterance ends).

`recognizer.py` composes them into `StreamingRecognizer` (its streams and events: `stream.py`),
which the server drives; `mtspeech.decoding.loader.load_recognizer` builds one from a checkpoint. The names
below are the public ones; import them from here.
"""

from mtspeech.data.geometry import SAMPLE_RATE, FrameGeometry
from mtspeech.data.resample import MAX_ABS_SAMPLE, StreamResampler
from mtspeech.streaming.recognizer import StreamingConfig, StreamingRecognizer
from mtspeech.streaming.stream import Event, FinalEvent, PartialEvent, SpeechActivityEvent, Stream
from mtspeech.streaming.encoder import asr_task, phone_task, vad_task

__all__ = ["MAX_ABS_SAMPLE", "SAMPLE_RATE", "Event", "FinalEvent", "FrameGeometry", "PartialEvent",
           "SpeechActivityEvent", "Stream", "StreamResampler", "StreamingConfig", "StreamingRecognizer",
           "asr_task", "phone_task", "vad_task"]
