"""Task towers with cross-stitch units (soft sharing): identity stitch = plain towers, chunked =
full context with the towers' caches, α trains at its own rate, clear config errors, and
configs without towers build the model they always built; a hard-shared encoder split into
towers (branching's split) keeps its outputs, and streams like full context."""

from __future__ import annotations

import json

import pytest
import torch

from encoder_helpers import feats, tiny
from mtspeech.config import ConfigError
from mtspeech.encoders import EncoderCache
from mtspeech.encoders.subsampling import chunk_windows
from mtspeech.encoders.towers import CrossStitch, TowersConfig, cross_stitch_alphas, split_into_towers
from mtspeech.experiment import build_model, experiment_from_dict, experiment_to_dict
from mtspeech.tasks import Targets

torch.set_num_threads(1)  # tiny models on shared cores
TOL = dict(atol=1e-5, rtol=1e-5)
TOWERS = {"tasks": ["asr", "phones"], "layers": 2}
LABELS = {"asr": {"label": "text", "vocab_size": 12}, "phones": {"label": "phones", "phones": ["a", "b", "c"]},
          "vad": {}}


def towered(name: str = "conformer", layers: int = 3, **towers):
    """A tiny seeded encoder of `layers` layers whose top two are asr and phones towers."""
    return tiny(name, layers=layers, towers=dict(TOWERS, **towers)).eval()


def scramble_alphas(enc, seed: int = 0) -> None:
    """Move every α well away from its initial value, so a mixing bug cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for alpha in enc.towers.alphas():
            alpha.copy_(torch.rand(alpha.shape, generator=g) + 0.2)


def config(towers: dict | None = TOWERS, **layers) -> dict:
    """A 3-layer, 32-dim Conformer with asr, phones and vad; `layers` sets tasks' `layer`."""
    tasks = {"asr": {"kind": "ctc", "label": "text", "layer": -1, "vocab_size": 12, "dropout": 0.0},
             "phones": {"kind": "ctc", "label": "phones", "layer": -1, "dropout": 0.0},
             "vad": {"kind": "vad", "layer": 0}}
    for name, layer in layers.items():
        tasks[name]["layer"] = layer
    encoder = {"kind": "conformer", "dim": 32, "layers": 3, "heads": 2, "conv_kernel": 5, "dropout": 0.0,
               "max_chunk_frames": 4, "dynamic_chunk": False}
    if towers is not None:
        encoder["towers"] = towers
    return {"exp_dir": "unused", "data": {"train": "unused.jsonl"}, "encoder": encoder, "tasks": tasks,
            "specaugment": None}


def model_of(cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(experiment_from_dict(cfg), LABELS)


@torch.no_grad()
def test_cross_stitch_at_the_identity_reproduces_the_towers_without_mixing():
    stitched = towered(cross_stitch=True)
    plain = towered(cross_stitch=False)
    plain.load_state_dict({k: v for k, v in stitched.state_dict().items() if "stitches" not in k})  # strict
    x, lens = feats(79, 41)
    mixed = stitched(x, lens)
    for alpha in stitched.towers.alphas():
        alpha.copy_(torch.eye(2))
    identity, separate = stitched(x, lens), plain(x, lens)
    for task in ("asr", "phones"):
        for got, want in zip(identity.towers[task], separate.towers[task]):
            torch.testing.assert_close(got, want, **TOL)
    # at its 0.9 / 0.1 start the unit really mixes: the phones tower's top moves
    assert not torch.allclose(mixed.towers["phones"][-1], separate.towers["phones"][-1], atol=1e-3)
    # the trunk is untouched by either, and `layers` is the trunk then the first tower (asr)
    torch.testing.assert_close(identity.layers[0], separate.layers[0], **TOL)
    assert identity.layers[1:] == identity.towers["asr"] and identity.task_layers("phones")[0] is identity.layers[0]


def test_cross_stitch_unit_mixes_by_alpha():
    unit = CrossStitch(3)
    assert torch.allclose(unit.alpha.diagonal(), torch.full((3,), 0.9))
    assert torch.allclose(unit.alpha.sum(1), torch.ones(3))  # 0.1 shared off the diagonal
    xs = [torch.randn(2, 5, 4) for _ in range(3)]
    with torch.no_grad():
        unit.alpha.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, -1.0]]))
    out = unit(xs)
    torch.testing.assert_close(out[0], xs[0] + 2 * xs[1])
    torch.testing.assert_close(out[1], 0.5 * xs[1] + 0.5 * xs[2])
    torch.testing.assert_close(out[2], -xs[2])


@pytest.mark.parametrize("name", ["conformer", "transformer"])
@pytest.mark.parametrize("chunk_frames,left_chunks", [(1, 3), (3, 1), (4, 0)])
@torch.no_grad()
def test_towers_stream_chunk_by_chunk_equal_to_full_context(name, chunk_frames, left_chunks):
    enc = towered(name, layers=3, cross_stitch=True)
    scramble_alphas(enc)
    x, lens = feats(79)
    full = enc(x, lens, chunk_frames=chunk_frames, left_chunks=left_chunks)
    cache = enc.init_cache(1, chunk_frames, left_chunks)
    assert cache.keys.shape[0] == enc.cache_layers == 1 + 2 * 2  # trunk, then two towers of two
    parts: dict[str, list[list[torch.Tensor]]] = {t: [[], [], []] for t in ("asr", "phones")}
    for start, end in chunk_windows(x.shape[1], chunk_frames):
        out, cache = enc.forward_chunk(x[:, start:end], cache)
        for task, layers in parts.items():
            for k, h in enumerate(out.task_layers(task)):
                layers[k].append(h)
    assert int(cache.frames_seen) == int(full.lens) == 19
    for task, layers in parts.items():
        for k, (chunks, want) in enumerate(zip(layers, full.task_layers(task))):
            torch.testing.assert_close(torch.cat(chunks, dim=1), want, **TOL, msg=f"{task} layer {k}")


@torch.no_grad()
def test_towered_streams_at_different_progress_batch_together():
    enc = towered(cross_stitch=True)
    scramble_alphas(enc, seed=1)
    c, left = 3, 2
    (x1, _), (x2, _) = feats(79, seed=2), feats(50, seed=3)
    w1, w2 = chunk_windows(79, c), chunk_windows(50, c)
    cache1 = enc.init_cache(1, c, left)
    for s, e in w1[:3]:
        _, cache1 = enc.forward_chunk(x1[:, s:e], cache1)
    cache2 = enc.init_cache(1, c, left)
    alone1, _ = enc.forward_chunk(x1[:, slice(*w1[3])], cache1)
    alone2, _ = enc.forward_chunk(x2[:, slice(*w2[0])], cache2)
    both, _ = enc.forward_chunk(torch.cat([x1[:, slice(*w1[3])], x2[:, slice(*w2[0])]]),
                                EncoderCache.stack([cache1, cache2]))
    for task in ("asr", "phones"):
        for got, a, b in zip(both.towers[task], alone1.towers[task], alone2.towers[task]):
            torch.testing.assert_close(got[:1], a, **TOL)
            torch.testing.assert_close(got[1:], b, **TOL)


def test_tasks_read_their_towers_and_gradients_reach_alpha():
    model = model_of(config(towers=dict(TOWERS, cross_stitch=True))).train()
    g = torch.Generator().manual_seed(0)
    wav, wav_lens = torch.randn(2, 8000, generator=g) * 0.1, torch.tensor([8000, 6000])
    with torch.no_grad():
        enc = model.encode(wav, wav_lens)
        logits = model.task_logits(enc)
    # phones reads the top of its own tower, asr of its own, vad (no tower) the shared trunk
    assert torch.equal(logits["phones"], model.tasks["phones"](enc.towers["phones"][-1], enc.lens))
    assert torch.equal(logits["asr"], model.tasks["asr"](enc.towers["asr"][-1], enc.lens))
    assert not torch.allclose(enc.towers["asr"][-1], enc.towers["phones"][-1])
    targets = {"asr": Targets(torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1]), torch.ones(2, dtype=torch.bool)),
               "phones": Targets(torch.tensor([[1, 2, 3], [2, 1, 0]]), torch.tensor([3, 2]),
                                 torch.ones(2, dtype=torch.bool))}
    losses, _, _ = model(wav, wav_lens, targets)
    losses["phones"].backward()  # the phones loss alone reaches the asr tower only through α
    for alpha in model.encoder.towers.alphas():
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    asr_tower = [p.grad for p in model.encoder.towers.blocks["asr"].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in asr_tower)
    assert set(cross_stitch_alphas(model.encoder)) == {f"cross_stitch/{j}/{a}/{b}" for j in (0, 1)
                                                       for a in ("asr", "phones") for b in ("asr", "phones")}


def test_without_cross_stitch_towers_share_nothing_above_the_trunk():
    model = model_of(config()).train()
    wav, wav_lens = torch.randn(1, 8000) * 0.1, torch.tensor([8000])
    targets = {"phones": Targets(torch.tensor([[1, 2, 3]]), torch.tensor([3]), torch.ones(1, dtype=torch.bool))}
    losses, _, _ = model(wav, wav_lens, targets)
    losses["phones"].backward()
    assert all(p.grad is None for p in model.encoder.towers.blocks["asr"].parameters())
    assert model.encoder.towers.alphas() == [] and cross_stitch_alphas(model.encoder) == {}


def test_learned_mix_of_a_tower_task_spans_trunk_and_its_tower():
    model = model_of(config(phones="learned")).eval()
    with torch.no_grad():
        model.tasks["phones"].layer_mix.logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
        enc = model.encode(torch.randn(1, 8000) * 0.1, torch.tensor([8000]))
        w = model.tasks["phones"].layer_mix.weights()
        want = w[0] * enc.layers[0] + w[1] * enc.towers["phones"][0] + w[2] * enc.towers["phones"][1]
        torch.testing.assert_close(model.task_logits(enc)["phones"], model.tasks["phones"](want, enc.lens))


@pytest.mark.parametrize("change, message", [
    (dict(towers={"tasks": ["asr", "speaker"], "layers": 1}),
     r"encoder.towers.tasks: \['speaker'\] are not configured tasks"),
    (dict(towers={"tasks": ["asr", "phones"], "layers": 4}), "encoder.towers.layers=4 exceeds the encoder's 3 layers"),
    (dict(towers={"tasks": ["asr", "asr"], "layers": 1}), "must name at least two different tasks"),
    (dict(towers={"tasks": ["asr"], "layers": 1}), "must name at least two different tasks"),
    (dict(towers={"tasks": ["asr", "phones"], "layers": 0}), "encoder.towers.layers must be >= 1"),
    (dict(towers={"tasks": ["asr", "phones"], "layers": 2, "lanes": 2}), "unknown config key.*encoder.towers.lanes"),
    (dict(phones=0), r"tasks.phones.layer: 0 reads the shared trunk \(layers 0..0\), below the task's own tower"),
    (dict(phones=1), "tasks.phones.layer: 1 is below the top of phones's tower, whose blocks above would get no "
                     "gradient without cross-stitch"),
])
def test_bad_tower_configs_are_clear_errors(change, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        model_of(config(**change))


def test_with_cross_stitch_a_tower_task_may_read_below_its_towers_top():
    model = model_of(config(towers=dict(TOWERS, cross_stitch=True), phones=1)).eval()
    with torch.no_grad():
        enc = model.encode(torch.randn(1, 8000) * 0.1, torch.tensor([8000]))
        torch.testing.assert_close(model.task_logits(enc)["phones"],
                                   model.tasks["phones"](enc.towers["phones"][0], enc.lens))


def test_conditioning_inside_the_towers_is_refused_and_the_trunk_top_is_fine():
    cfg = config(towers={"tasks": ["asr", "phones"], "layers": 1}, phones=-1)
    cfg["tasks"]["asr"].update(intermediate_layers=[1], condition=True)  # layer 1: the trunk's top
    assert set(model_of(cfg).encoder.conditioners) == {"1"}
    cfg = config(towers={"tasks": ["asr", "phones"], "layers": 2})
    cfg["tasks"]["asr"].update(intermediate_layers=[1], condition=True)
    with pytest.raises(ValueError, match="lies in the task towers .* conditioning inside towers is not supported"):
        model_of(cfg)


def test_tasks_without_a_tower_read_the_trunk_then_the_first_tower():
    model = model_of(config(vad=-1)).eval()  # vad has no tower: its -1 is the asr tower's top
    with torch.no_grad():
        enc = model.encode(torch.randn(1, 8000) * 0.1, torch.tensor([8000]))
        torch.testing.assert_close(model.task_logits(enc)["vad"], model.tasks["vad"](enc.towers["asr"][-1], enc.lens))


def test_configs_without_towers_are_unchanged():
    model = model_of(config(towers=None, phones=0))
    keys = model.encoder.state_dict().keys()
    assert model.encoder.towers is None and not any("towers" in k or "stitch" in k for k in keys)
    assert {k.split(".")[1] for k in keys if k.startswith("blocks.")} == {"0", "1", "2"}  # all three blocks
    assert model.encoder.cache_layers == 3
    saved = experiment_to_dict(experiment_from_dict(config(towers=None, phones=0)))
    assert "towers" not in saved["encoder"]  # an ablation grid started before towers still resumes
    towered_cfg = experiment_to_dict(experiment_from_dict(config()))
    assert experiment_from_dict(towered_cfg).encoder.cfg.towers.tasks == ("asr", "phones")  # round trip


def test_trainer_gives_alpha_its_learning_rate_logs_and_plots_it(prepared_manifests, tmp_path):
    from mtspeech.evaluation.plots import plot_learned
    from mtspeech.train import Trainer
    from tiny_experiment import tiny_experiment

    cfg = tiny_experiment(prepared_manifests, tmp_path / "exp",
                          encoder={"layers": 2, "towers": {"tasks": ["asr", "phones"], "layers": 1,
                                                           "cross_stitch": True, "cross_stitch_lr_scale": 30.0}},
                          tasks={"asr": {"kind": "ctc", "label": "text", "layer": -1, "vocab_size": 30},
                                 "phones": {"kind": "ctc", "label": "phones", "layer": -1, "weight": 0.3}},
                          train={"epochs": 1, "max_steps": 3, "average_best": 1})
    trainer = Trainer(experiment_from_dict(cfg))
    alpha = trainer.model.encoder.towers.alphas()[0]
    groups = [g for g in trainer.optimizer.param_groups if any(p is alpha for p in g["params"])]
    assert len(groups) == 1 and groups[0]["params"] == [alpha] and groups[0]["weight_decay"] == 0.0
    assert groups[0]["initial_lr"] == pytest.approx(30.0 * 3e-3)
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(3e-3)
    start = alpha.detach().clone()
    trainer.fit()
    assert not torch.equal(alpha.detach(), start)
    log_lines = (tmp_path / "exp" / "train_log.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, log_lines) if "cross_stitch/0/asr/phones" in r]
    assert records and records[-1]["cross_stitch/0/asr/phones"] == pytest.approx(float(alpha.detach()[0, 1]), abs=1e-6)
    png = plot_learned(tmp_path / "exp" / "train_log.jsonl", tmp_path / "learned.png")
    panels = json.loads(png.with_suffix(".json").read_text())["panels"]
    assert set(panels["cross-stitch α, tower layer 0"]) == {"asr ← asr", "asr ← phones", "phones ← asr",
                                                            "phones ← phones"}


@pytest.mark.parametrize("chunk_frames,left_chunks", [(1, 3), (3, 1)])
@torch.no_grad()
def test_split_copies_the_shared_top_keeps_every_output_and_streams_like_full_context(chunk_frames, left_chunks):
    enc = tiny("conformer", layers=3).eval()
    x, lens = feats(79)
    before = enc(x, lens, chunk_frames=chunk_frames, left_chunks=left_chunks)
    sources = split_into_towers(enc, TowersConfig(tasks=("up", "down"), layers=2, followers={"same": "up"}))
    assert len(enc.blocks) == 1 and enc.cache_layers == 1 + 2 * 2 and enc.cfg.towers.layers == 2
    assert all(p is not s and torch.equal(p, s) for p, s in sources.items())  # copies, not shared
    with torch.no_grad():  # train the towers apart, so a mixed-up tower cannot hide
        for p in enc.towers.blocks["down"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    full = enc(x, lens, chunk_frames=chunk_frames, left_chunks=left_chunks)
    torch.testing.assert_close(full.task_layers("up")[-1], before.layers[-1], **TOL)  # up's tower: a copy
    assert full.towers["same"] is full.towers["up"]  # a follower reads its group's tower
    assert not torch.allclose(full.towers["down"][-1], full.towers["up"][-1], atol=1e-3)
    cache = enc.init_cache(1, chunk_frames, left_chunks)
    parts: dict[str, list[torch.Tensor]] = {t: [] for t in ("up", "same", "down")}
    for start, end in chunk_windows(x.shape[1], chunk_frames):
        out, cache = enc.forward_chunk(x[:, start:end], cache)
        for task in parts:
            parts[task].append(out.task_layers(task)[-1])
    for task, chunks in parts.items():
        torch.testing.assert_close(torch.cat(chunks, dim=1), full.task_layers(task)[-1], **TOL, msg=task)


def split_with_follower():
    """A hard-shared model whose top two blocks branching split: vad follows the phones tower."""
    model = model_of(config(towers=None, vad=-1))
    split_into_towers(model.encoder, TowersConfig(tasks=("asr", "phones"), layers=2, followers={"vad": "phones"}))
    with torch.no_grad():  # the towers apart, as training after the split would leave them
        for p in model.encoder.towers.blocks["phones"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("build", ["cross_stitch", "split_with_follower"])
def test_towered_model_exports_to_onnx_with_torch_parity(tmp_path, build):
    """The exported streaming step carries the towers' caches and reads each head's tower, a
    follower's too (~15 s each)."""
    from mtspeech.export.onnx import export_onnx
    from mtspeech.export.parity import logit_parity
    from mtspeech.export.runtime import OnnxEncoderStep
    from mtspeech.streaming.encoder import TorchEncoderStep
    from tiny_asr import signal

    if build == "cross_stitch":
        model = model_of(config(towers=dict(TOWERS, cross_stitch=True)))
        scramble_alphas(model.encoder)
    else:
        model = split_with_follower()
    model.eval()
    model.cmvn.set_stats(torch.full((80,), -6.0), torch.full((80,), 4.0))
    export_onnx(model, tmp_path, 4, 3)
    with torch.inference_mode():
        feats = [model.features(torch.from_numpy(signal(2.0, seed=s))[None], torch.tensor([32000]))[0][0]
                 for s in (0, 1)]
    diff = logit_parity(TorchEncoderStep(model, 4, 3), OnnxEncoderStep(tmp_path), feats)
    assert set(diff) == {"asr", "phones", "vad"} and max(diff.values()) < 1e-4, diff
