"""`layer: learned`: a softmax-weighted sum of every encoder layer, per task (SUPERB weighted sum)."""

from __future__ import annotations

import pytest
import torch

from mtspeech.config import ConfigError
from mtspeech.encoders import EncoderOutput
from mtspeech.encoders.subsampling import chunk_windows
from mtspeech.experiment import build_model, experiment_from_dict
from mtspeech.tasks import Targets
from mtspeech.tasks.layer_mix import LayerMix, layer_weights

torch.set_num_threads(1)  # tiny models on shared cores

LABELS = {"asr": {"label": "text", "vocab_size": 12}, "phones": {"label": "phones", "phones": ["a", "b", "c"]},
          "speaker": {"speakers": ["s1", "s2"]}, "vad": {}}


def config(**layers) -> dict:
    """A 3-layer, 32-dim Conformer with four tasks; `layers` sets tasks' `layer` (name=value)."""
    tasks = {"asr": {"kind": "ctc", "label": "text", "layer": -1, "vocab_size": 12, "dropout": 0.0},
             "phones": {"kind": "ctc", "label": "phones", "layer": 0, "dropout": 0.0},
             "speaker": {"kind": "speaker", "layer": 0}, "vad": {"kind": "vad", "layer": 1}}
    for name, layer in layers.items():
        tasks[name]["layer"] = layer
    return {"exp_dir": "unused", "data": {"train": "unused.jsonl"},
            "encoder": {"kind": "conformer", "dim": 32, "layers": 3, "heads": 2, "conv_kernel": 5, "dropout": 0.0,
                        "max_chunk_frames": 4, "dynamic_chunk": False},
            "tasks": tasks, "specaugment": None}


def model_of(cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(experiment_from_dict(cfg), LABELS)


def test_weights_sum_to_one_and_receive_gradients():
    model = model_of(config(phones="learned", vad="learned")).train()
    mix = model.tasks["phones"].layer_mix
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    weights = layer_weights(model.tasks)
    assert set(weights) == {"phones", "vad"} and len(weights["phones"]) == 3
    assert sum(weights["phones"]) == pytest.approx(1.0) and sum(weights["vad"]) == pytest.approx(1.0)
    # the mix is the weighted sum of the layers, and the head reads it
    layers = [torch.randn(2, 5, 32) for _ in range(3)]
    w = torch.softmax(torch.tensor([0.5, -1.0, 2.0]), -1)
    assert torch.allclose(mix(layers), sum(wk * h for wk, h in zip(w, layers)), atol=1e-6)
    enc = EncoderOutput(layers=layers, lens=torch.tensor([5, 3]))
    assert torch.allclose(model.task_logits(enc)["phones"], model.tasks["phones"](mix(layers), enc.lens))

    g = torch.Generator().manual_seed(0)
    wav, wav_lens = torch.randn(2, 8000, generator=g) * 0.1, torch.tensor([8000, 6000])
    targets = {"phones": Targets(torch.tensor([[1, 2, 3], [2, 1, 0]]), torch.tensor([3, 2]), torch.ones(2, dtype=torch.bool)),
               "vad": Targets(torch.rand(2, 12, generator=g).round(), torch.tensor([12, 9]), torch.ones(2, dtype=torch.bool))}
    losses, _, _ = model(wav, wav_lens, targets)
    (losses["phones"] + losses["vad"]).backward()
    for name in ("phones", "vad"):
        grad = model.tasks[name].layer_mix.logits.grad
        assert grad is not None and grad.abs().sum() > 0, name
        # softmax's gradient has no component along the all-ones direction (the weights' sum is fixed)
        assert abs(float(grad.sum())) < 1e-6


def test_chunked_streaming_equals_full_forward_for_a_learned_task():
    model = model_of(config(asr="learned", phones="learned")).eval()
    for name in ("asr", "phones"):
        with torch.no_grad():
            model.tasks[name].layer_mix.logits.normal_()
    chunk, left = 2, 2
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(1, 61, 80, generator=g)
    with torch.no_grad():
        full = model.task_logits(model.encoder(feats, torch.tensor([61]), chunk_frames=chunk, left_chunks=left))
        cache = model.encoder.init_cache(1, chunk, left)
        pieces: dict[str, list[torch.Tensor]] = {"asr": [], "phones": []}
        for start, end in chunk_windows(feats.shape[1], chunk):
            out, cache = model.encoder.forward_chunk(feats[:, start:end], cache)
            logits = model.task_logits(out)
            for name in pieces:
                pieces[name].append(logits[name])
    for name, parts in pieces.items():
        streamed = torch.cat(parts, dim=1)
        assert streamed.shape == full[name].shape
        assert torch.allclose(streamed, full[name], atol=1e-5), name


def test_streaming_recognizer_reads_the_learned_mix():
    """The streaming recognizer (not only the model) feeds its heads the task's mix."""
    from mtspeech.streaming import StreamingConfig, StreamingRecognizer
    from tiny_asr import PIECES, PieceTable, signal

    labels = dict(LABELS, asr={"label": "text", "vocab_size": len(PIECES)})
    cfg = config(asr="learned")
    cfg["tasks"]["asr"]["vocab_size"] = len(PIECES)
    torch.manual_seed(0)
    model = build_model(experiment_from_dict(cfg), labels).eval()
    with torch.no_grad():
        model.tasks["asr"].layer_mix.logits.copy_(torch.tensor([1.5, -0.5, 0.0]))
        model.cmvn.set_stats(torch.full((80,), -6.0), torch.full((80,), 4.0))
    rec = StreamingRecognizer(model, PieceTable(), StreamingConfig(chunk_frames=4, left_chunks=3))
    wav = signal(2.0)
    with torch.inference_mode():
        feats, lens = model.features(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        enc = model.encoder(feats, lens, chunk_frames=4, left_chunks=3)
        ref = model.tasks["asr"].greedy_decode(model.task_logits(enc)["asr"], enc.lens)[0]
    assert len(ref) >= 3, "the random model should emit tokens for the test to mean anything"
    s = rec.new_stream(endpointing=False)
    for i in range(0, len(wav), 1600):
        rec.accept(s, wav[i: i + 1600])
        while rec.ready(s):
            rec.step([s])
    rec.finish(s)
    finals = [e for e in rec.events(s) if type(e).__name__ == "FinalEvent"]
    assert len(finals) == 1 and list(finals[0].tokens) == ref


def test_integer_layer_configs_are_unchanged():
    model = model_of(config())
    assert not any("layer_mix" in k for k in model.state_dict())  # old checkpoints load strictly
    assert layer_weights(model.tasks) == {}
    layers = [torch.randn(1, 4, 32) for _ in range(3)]
    enc = EncoderOutput(layers=layers, lens=torch.tensor([4]))
    model.eval()
    logits = model.task_logits(enc)
    for name, task in model.tasks.items():
        assert isinstance(task.layer, int)
        assert torch.equal(logits[name], task(layers[task.layer], enc.lens)), name


@pytest.mark.parametrize("layer, message", [
    ("middle", "tasks.phones.layer: 'middle' is not an integer or 'learned'"),
    (3, "tasks.phones.layer: 3 is outside the encoder's 3 layers"),
    (-4, "outside the encoder's 3 layers"),
    (True, "tasks.phones.layer: True is not an integer or 'learned'"),
])
def test_bad_layer_values_are_clear_errors(layer, message):
    with pytest.raises(ConfigError, match=message):
        model_of(config(phones=layer))


def test_learned_cannot_combine_with_fixed_layer_features():
    cfg = config(phones="learned")
    cfg["tasks"]["phones"]["intermediate_layers"] = [0]
    with pytest.raises(ConfigError, match="tasks.phones.layer: 'learned' cannot be combined with `intermediate_layers`"):
        model_of(cfg)


def test_layer_mix_checks_its_depth():
    with pytest.raises(ValueError, match="built for 3 encoder layers, got 2"):
        LayerMix(3)([torch.zeros(1, 2, 4)] * 2)
