"""Fast adaptation to a new voice: a small declared parameter set fine-tuned on k utterances
(`mtspeech adapt`), its initial values meta-learned across the training voices with Reptile
(`mtspeech meta-train`), or set with no gradient step from the speaker head's embedding by an
adapter learned across the training voices (`mtspeech train-speaker-adapter`), and the
adaptation benchmark's building blocks.

    param_sets.py   which tensors a set adapts (input-norm, layer-norms, lora, speaker-embedding), their delta
    inputs.py       the k utterances of one voice: manifest or files + transcripts, checked
    fine_tune.py    the ASR CTC loss through the set's tensors; the inner loop every caller shares
    command.py      `mtspeech adapt`: the adapted checkpoint and its delta file
    reptile.py      `mtspeech meta-train`: first-order meta-learning of the set's initial values
    speaker_adapter.py         speaker-embedding conditioning: the speaker head's embedding → layer-norms values
    train_speaker_adapter.py   `mtspeech train-speaker-adapter`: that adapter learned across training voices
"""
