"""Decoding: from a head's log-probabilities to words, and the one way to build a recognizer.

- `config.py`: `DecodingConfig` (decoder, beam, LM weight, ...; the defaults chosen on dev)
  and the flags every decoding command shares;
- `ctc.py`: offline batch decoders (greedy, prefix beam search + word LM over pieces or, with
  `PhoneTable`, phones), word times of a batch;
- `lm.py`: word n-gram LMs (Kneser-Ney, ARPA) and the piece / CMUdict phone lexicons;
- `embedded_lm.py`: the LM a checkpoint carries (`mtspeech embed-lm`) and `--lm auto`;
- `loader.py`: `load_recognizer(checkpoint, DecodingConfig, backend)`, which serve, transcribe,
  evaluate and the benchmarks all use, and the phone-lexicon word decoder it assembles.

The best-path collapse and the word-time scheme sit below every decoder in
`mtspeech/alignment.py`; the streaming token decoders in `mtspeech/streaming/decoders.py`.
This package is the top of the inference stack: nothing under streaming/, export/, tasks/ or
the checkpoint imports it. Nothing is re-exported here, so importing `decoding.lm` stays cheap.
"""
