"""Loss weighting strategies: each moves its weights the way its paper says; exact resume."""

from __future__ import annotations

import pytest
import torch

from mtspeech.weighting import (
    WEIGHTINGS,
    DWAWeighting,
    GradNormWeighting,
    PCGradWeighting,
    UncertaintyWeighting,
    WeightingConfig,
    build_weighting,
)

NAMES = ["asr", "vad"]
STATIC = {"asr": 1.0, "vad": 0.5}


def test_registry_and_build():
    assert set(WEIGHTINGS) == {"static", "uncertainty", "dwa", "pcgrad", "gradnorm"}
    assert isinstance(build_weighting({"kind": "dwa", "window_steps": 3}, NAMES, STATIC), DWAWeighting)
    assert isinstance(build_weighting({"kind": "gradnorm", "alpha": 0.5}, NAMES, STATIC), GradNormWeighting)
    assert build_weighting(None, NAMES, STATIC).weights() == STATIC
    with pytest.raises(ValueError, match="weighting.kind"):
        build_weighting(WeightingConfig(kind="mgda"), NAMES, STATIC)


def test_static_stays_put_and_skips_missing_tasks():
    w = build_weighting(WeightingConfig(), NAMES, STATIC)
    p = torch.nn.Parameter(torch.tensor(2.0))
    for step in range(3):
        total = w.backward({"asr": p * 3, "vad": p * 4}, [p], step)
        assert total.item() == pytest.approx(2.0 * 3 + 0.5 * 2.0 * 4)
    assert p.grad.item() == pytest.approx(3 * (3 + 0.5 * 4))  # accumulated over 3 calls
    assert w.combine({"vad": p * 4}, 3).item() == pytest.approx(4.0)
    assert w.weights() == STATIC and w.state_dict() == {}
    with pytest.raises(KeyError, match="spk"):
        w.combine({"spk": p}, 0)


def test_uncertainty_gives_the_lower_loss_task_more_weight():
    w = build_weighting({"kind": "uncertainty"}, NAMES, {"asr": 1.0, "vad": 1.0})
    assert w.weights() == {"asr": 1.0, "vad": 1.0}
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    for step in range(200):
        opt.zero_grad()
        w.backward({"asr": torch.tensor(4.0), "vad": torch.tensor(0.5)}, [], step)
        opt.step()
    weights = w.weights()
    assert weights["vad"] > 1.0 > weights["asr"]
    # optimum exp(-s) = 1 / L
    assert weights["asr"] == pytest.approx(1 / 4.0, rel=0.05)
    assert weights["vad"] == pytest.approx(1 / 0.5, rel=0.05)


def test_uncertainty_starts_at_static_weights_and_round_trips():
    w = UncertaintyWeighting(NAMES, STATIC)
    assert w.weights() == pytest.approx(STATIC)
    with torch.no_grad():
        w.log_vars.add_(0.3)
    w2 = UncertaintyWeighting(NAMES, STATIC)
    w2.load_state_dict(w.state_dict())
    assert w2.weights() == pytest.approx(w.weights())


def test_dwa_raises_the_weight_of_a_task_that_stops_improving():
    w = build_weighting({"kind": "dwa", "window_steps": 2, "temperature": 1.0}, NAMES, {"asr": 1.0, "vad": 1.0})
    for step in range(8):  # asr halves every window, vad stays flat
        asr = torch.tensor(8.0 * 0.5 ** (step // 2))
        w.combine({"asr": asr, "vad": torch.tensor(1.0)}, step)
        if step < 4:  # two windows must close before DWA reacts
            assert w.weights() == {"asr": 1.0, "vad": 1.0}
    weights = w.weights()
    assert weights["vad"] > 1.0 > weights["asr"]
    assert sum(weights.values()) == pytest.approx(2.0)
    # ratios 0.5 and 1.0 at T=1: λ = 2·softmax([0.5, 1])
    expected = 2 * torch.softmax(torch.tensor([0.5, 1.0]), 0)
    assert [weights["asr"], weights["vad"]] == pytest.approx(expected.tolist())


def test_dwa_resume_is_exact():
    def run(w, steps):
        out = []
        for step in steps:
            loss = {"asr": torch.tensor(1.0 / (step + 1)), "vad": torch.tensor(1.0 + step % 3)}
            out.append(w.combine(loss, step).item())
        return out

    cfg = {"kind": "dwa", "window_steps": 2}
    straight = run(build_weighting(cfg, NAMES, STATIC), range(10))
    first = build_weighting(cfg, NAMES, STATIC)
    head = run(first, range(5))
    resumed = build_weighting(cfg, NAMES, STATIC)
    resumed.load_state_dict(first.state_dict())
    assert head + run(resumed, range(5, 10)) == pytest.approx(straight)


def test_pcgrad_removes_the_conflicting_component():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # a·b = -1 < 0: conflict
    shared = torch.nn.Parameter(torch.zeros(2))
    head = torch.nn.Parameter(torch.tensor(1.0))  # task-specific: plain gradient
    w = PCGradWeighting(NAMES, {"asr": 1.0, "vad": 1.0})
    losses = {"asr": shared @ a * head, "vad": shared @ b}
    total = w.backward(losses, [shared], step=0)
    assert shared.grad is None  # the shared gradient comes with sync_grads, once per step
    w.sync_grads()
    # g_a' = a - (a·b)/|b|² b = [0.5, 0.5];  g_b' = b - (a·b)/|a|² a = [0, 1]
    torch.testing.assert_close(shared.grad, torch.tensor([0.5, 1.5]))
    assert torch.dot(torch.tensor([0.5, 0.5]), b) == 0
    assert head.grad.item() == 0.0 and total.item() == 0.0
    # no conflict: plain sum
    shared.grad = None
    w.backward({"asr": shared @ a, "vad": shared @ torch.tensor([1.0, 1.0])}, [shared], step=1)
    w.sync_grads()
    torch.testing.assert_close(shared.grad, torch.tensor([2.0, 1.0]))


def test_pcgrad_projects_the_sum_of_accumulated_micro_batches():
    """One gradient per task per optimizer step: micro-batches add up, then one projection."""
    shared = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        shared.weight.copy_(torch.tensor([[0.5, -1.0]]))
    head = torch.nn.Parameter(torch.tensor(1.0))  # asr's own parameter
    w = PCGradWeighting(NAMES, {"asr": 1.0, "vad": 1.0})
    a1, a2, b2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 1.0])
    # micro-batch 1: vad absent (adds nothing); micro-batch 2: both, conflicting
    total = w.backward({"asr": head * shared(a1).sum()}, shared.parameters(), step=7)
    assert total.item() == pytest.approx(0.5)
    w.backward({"asr": head * shared(a2).sum(), "vad": shared(b2).sum()}, shared.parameters(), step=7)
    assert shared.weight.grad is None and head.grad.item() == pytest.approx(0.5 + 0.5)  # plain, accumulated
    w.sync_grads()
    # g_a = a1 + a2 = [2, 0], g_b = b2 = [-2, 1], g_a·g_b = -4:
    # g_a' = g_a + 4/5 g_b = [0.4, 0.8];  g_b' = g_b + 4/4 g_a = [0, 1]
    torch.testing.assert_close(shared.weight.grad, torch.tensor([[0.4, 1.8]]))
    # (projecting each micro-batch and summing, as before, gives [1, 0] + [0.2, 1.4] = [1.2, 1.4])
    w.sync_grads()  # the buffer is empty after a sync: nothing is added twice
    torch.testing.assert_close(shared.weight.grad, torch.tensor([[0.4, 1.8]]))
    assert w.state_dict() == {}


def test_pcgrad_buffer_is_empty_at_step_boundaries():
    shared = torch.nn.Parameter(torch.zeros(2))
    w = PCGradWeighting(NAMES, STATIC)
    w.backward({"asr": shared @ torch.tensor([1.0, 2.0])}, [shared], step=0)
    with pytest.raises(RuntimeError, match="sync_grads"):  # a step without sync_grads
        w.backward({"asr": shared @ torch.tensor([1.0, 2.0])}, [shared], step=1)
    w.zero_grad()  # a dropped accumulation window
    w.backward({"vad": shared @ torch.tensor([3.0, 0.0])}, [shared], step=1)
    w.sync_grads()
    torch.testing.assert_close(shared.grad, torch.tensor([1.5, 0.0]))
    assert PCGradWeighting.syncs_model_grads and not DWAWeighting.syncs_model_grads


def test_pcgrad_trains_a_tiny_two_head_model():
    torch.manual_seed(0)
    trunk, head_a, head_b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    x, ya, yb = torch.randn(16, 4), torch.randn(16, 1), torch.randn(16, 1)
    params = [*trunk.parameters(), *head_a.parameters(), *head_b.parameters()]
    opt = torch.optim.SGD(params, lr=0.05)
    w = build_weighting({"kind": "pcgrad"}, NAMES, {"asr": 1.0, "vad": 1.0})
    totals = []
    for step in range(30):
        opt.zero_grad()
        z = trunk(x)
        losses = {"asr": ((head_a(z) - ya) ** 2).mean(), "vad": ((head_b(z) - yb) ** 2).mean()}
        totals.append(w.backward(losses, trunk.parameters(), step).item())
        w.sync_grads(params)
        opt.step()
    assert totals[-1] < totals[0]
    assert w.weights() == {"asr": 1.0, "vad": 1.0}


def gradnorm_step(w, p, step, scale_fn=None):
    """One optimizer step of the two linear tasks below: ‖∇L_asr‖ = 5, ‖∇L_vad‖ = 1."""
    losses = {"asr": p @ torch.tensor([3.0, 4.0]) + 2.0, "vad": p @ torch.tensor([0.0, 1.0]) + 1.0}
    total = w.backward(losses, [p], step, scale_fn)
    w.sync_grads()
    return total


def test_gradnorm_moves_weight_to_the_task_with_the_smaller_gradient():
    p = torch.nn.Parameter(torch.zeros(2))
    w = build_weighting({"kind": "gradnorm", "lr": 0.3}, NAMES, {"asr": 1.0, "vad": 1.0})
    assert w.weights() == {"asr": 1.0, "vad": 1.0} and list(w.parameters()) == []
    total = gradnorm_step(w, p, 0)
    assert total.item() == pytest.approx(3.0)
    torch.testing.assert_close(p.grad, torch.tensor([3.0, 5.0]))  # Σ λ_k ∇L_k with λ = 1 (before the update)
    # G = [5, 1], Ḡ = 3, equal training rates → targets [3, 3]; ∂/∂λ = sign(G - T)·‖∇L‖/Ḡ = [5/3, -1/3]
    # λ = [1 - 0.3·5/3, 1 + 0.3/3] = [0.5, 1.1], renormalised to Σ = 2
    assert list(w.weights().values()) == pytest.approx([0.5 * 2 / 1.6, 1.1 * 2 / 1.6])
    w = GradNormWeighting(NAMES, {"asr": 1.0, "vad": 1.0}, lr=0.01)  # sign steps: small ones to settle
    for step in range(100):
        gradnorm_step(w, p, step)
    weights = w.weights()  # around equal weighted norms, λ_asr·5 = λ_vad·1, within a step or two
    assert sum(weights.values()) == pytest.approx(2.0)
    assert weights["vad"] / weights["asr"] == pytest.approx(5.0, rel=0.15)


def test_gradnorm_gives_the_slower_task_a_larger_gradient_target():
    p = torch.nn.Parameter(torch.zeros(2))
    w = GradNormWeighting(NAMES, {"asr": 1.0, "vad": 1.0}, alpha=1.5, lr=0.05)
    for step in range(20):  # equal gradient norms; asr's loss stays, vad's halves every step
        a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
        w.backward({"asr": p @ a + 4.0, "vad": p @ b + 4.0 * 0.5 ** step}, [p], step)
        w.sync_grads()
    assert w.weights()["asr"] > 1.0 > w.weights()["vad"]


def test_gradnorm_ignores_the_loss_scale():
    """fp16 loss scaling and accumulation scale every norm alike: the update is the same."""
    plain, scaled = (GradNormWeighting(NAMES, STATIC, lr=0.1) for _ in range(2))
    for step in range(3):
        gradnorm_step(plain, torch.nn.Parameter(torch.zeros(2)), step)
        gradnorm_step(scaled, torch.nn.Parameter(torch.zeros(2)), step, scale_fn=lambda t: t * 1024 / 3)
    assert scaled.weights() == pytest.approx(plain.weights())
    assert plain.weights() != pytest.approx({"asr": 1.0, "vad": 0.5})  # it did move


def test_gradnorm_resume_is_exact_and_skips_absent_tasks():
    def run(w, steps):
        p = torch.nn.Parameter(torch.zeros(2))
        out = []
        for step in steps:
            losses = {"asr": p @ torch.tensor([3.0, 1.0]) * (1 + step) + 5.0 / (step + 1)}
            if step % 3:  # vad has no label every third step: it sits the step out
                losses["vad"] = p @ torch.tensor([-1.0, 2.0]) + 1.0
            out.append(w.backward(losses, [p], step).item())
            w.sync_grads()
            out.extend(w.weights().values())
        return out

    cfg = {"kind": "gradnorm", "lr": 0.05}
    straight = run(build_weighting(cfg, NAMES, STATIC), range(8))
    first = build_weighting(cfg, NAMES, STATIC)
    head = run(first, range(4))
    resumed = build_weighting(cfg, NAMES, STATIC)
    resumed.load_state_dict(first.state_dict())
    assert set(first.state_dict()) == {"lambdas", "initial_losses"}
    assert head + run(resumed, range(4, 8)) == pytest.approx(straight)
    assert straight[3 * 3 + 1: 3 * 3 + 3] == straight[2 * 3 + 1: 2 * 3 + 3]  # step 3, vad absent: no update
    assert straight[1 * 3 + 1: 1 * 3 + 3] != straight[0 * 3 + 1: 0 * 3 + 3]
    assert sum(first.weights().values()) == pytest.approx(1.5)  # Σ λ stays Σ w


def test_gradnorm_trains_a_tiny_two_head_model():
    torch.manual_seed(0)
    trunk, head_a, head_b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    x, ya, yb = torch.randn(16, 4), torch.randn(16, 1), 10 * torch.randn(16, 1)
    params = [*trunk.parameters(), *head_a.parameters(), *head_b.parameters()]
    opt = torch.optim.SGD(params, lr=0.01)
    w = build_weighting({"kind": "gradnorm", "lr": 0.02}, NAMES, {"asr": 1.0, "vad": 1.0})
    raw = []
    for step in range(30):
        opt.zero_grad()
        z = trunk(x)
        losses = {"asr": ((head_a(z) - ya) ** 2).mean(), "vad": ((head_b(z) - yb) ** 2).mean()}
        w.backward(losses, trunk.parameters(), step)
        w.sync_grads(params)
        opt.step()
        raw.append(sum(v.item() for v in losses.values()))
    assert raw[-1] < raw[0]
    assert w.weights()["vad"] < 1.0 < w.weights()["asr"]  # vad's 10x targets: the larger gradient
