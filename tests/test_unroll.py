"""Oracles for reverse mode through training steps (pipeline/core/unroll.py), in float64 on
tiny models: the teacher gradient from running K steps backwards, and from checkpointed
segments under SGD, Adam and AdamW, equals autograd through the whole unrolled training; the
recovered states equal stored copies; with one step it equals the core's one-step JVP route;
in float32 at T = 300 the segments route matches the stored-states route."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pipeline.core.meta import (
    buffer_copies,
    forward_with_tangent,
    lookahead_direction,
    teacher_surrogate,
    weights_loss,
)
from pipeline.core.optim import AdamRule, SGDRule, sgd_step
from pipeline.core.unroll import (
    REVERSAL_LIMIT,
    Step,
    backward_by_segments,
    backward_through_steps,
)

RULES = [SGDRule(0.1, 0.9), SGDRule(0.05, 0.5, weight_decay=1e-2)]


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def student(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def batch(model: nn.Module, seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 6) if isinstance(model[0], nn.Linear) else (n, 1, 8, 8)
    return torch.randn(shape, generator=g), torch.randint(0, 3, (n,), generator=g)


class Teacher(nn.Module):
    """sigma(W logits + E y + b), normalised in the batch; `deep`: the weights also depend on
    the student (the "deeper interactions" path)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.linear = nn.Linear(6, 1)

    def forward(self, logits, y, deep=False):
        logits = logits if deep else logits.detach()
        w = torch.sigmoid(self.linear(torch.cat([logits, F.one_hot(y, 3).to(logits)], 1)))
        w = w.squeeze(1)
        return w / w.sum()


def objective(model, teacher, x, y, deep=False):
    def loss(theta):
        # Batch norm on fresh buffer copies: a transformed function may not mutate captures.
        out = functional_call(model, (theta, buffer_copies(model)), (x,))
        return (teacher(out, y, deep) * F.cross_entropy(out, y, reduction="none")).sum()

    return loss


def val_loss(model, theta, seed=99):
    x, y = batch(model, seed, 16)
    return F.cross_entropy(functional_call(model, (theta, buffer_copies(model)), (x,)), y)


def unrolled(model, teacher, rule, steps, deep=False, lrs=None):
    """`steps` steps of a core rule (weight decay inside it) with the whole graph kept: the
    oracle. Returns the final parameters and optimiser state, the (parameters, state) before
    each step, and the steps' records."""
    theta = {k: p.detach().clone().requires_grad_() for k, p in model.named_parameters()}
    state, before, records = {}, [], []
    for t in range(steps):
        lr = lrs[t] if lrs else rule.lr
        x, y = batch(model, t)
        loss = objective(model, teacher, x, y, deep)
        before.append(
            (
                {k: p.detach() for k, p in theta.items()},
                {k: v.detach() if torch.is_tensor(v) else v for k, v in state.items()},
            )
        )
        grads = torch.autograd.grad(loss(theta), list(theta.values()), create_graph=True)
        theta, state = replace(rule, lr=lr).step(theta, dict(zip(theta, grads, strict=True)), state)
        records.append(Step(lr, loss))
    return theta, state, before, records


def reverse(model, teacher, rule, theta, v, records, trace=None):
    theta_k = {k: p.detach().requires_grad_() for k, p in theta.items()}
    (val_grad,) = [torch.autograd.grad(val_loss(model, theta_k), list(theta_k.values()))]
    val_grad = dict(zip(theta_k, val_grad, strict=True))
    return backward_through_steps(
        theta, v, records, rule, val_grad, list(teacher.parameters()), trace
    )


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("deep", [False, True])
def test_reverse_mode_equals_autograd_through_all_steps(kind, rule, deep):
    model, teacher = student(kind), Teacher()
    lrs = [rule.lr, rule.lr, rule.lr / 2, rule.lr / 2, rule.lr / 4]
    theta, v, _, records = unrolled(model, teacher, rule, 5, deep, lrs)
    expected = torch.autograd.grad(val_loss(model, theta), list(teacher.parameters()))
    got = reverse(model, teacher, rule, theta, v, records)
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) < 1e-9


@pytest.mark.parametrize("back", [1, 2])
def test_fewer_steps_back_equals_truncated_autograd(back):
    """B < K: the gradient through the last B steps, the earlier states held fixed."""
    rule = RULES[0]
    model, teacher = student("mlp"), Teacher()
    theta, v, states, records = unrolled(model, teacher, rule, 4)
    start_theta, start_v = states[4 - back]
    # The oracle: replay the last B steps from detached states with the graph kept.
    replay, buf = dict(start_theta), dict(start_v)
    replay = {k: p.requires_grad_() for k, p in replay.items()}
    for step in records[4 - back :]:
        grads = torch.autograd.grad(
            step.objective(replay), list(replay.values()), create_graph=True
        )
        replay, buf = sgd_step(replay, dict(zip(replay, grads, strict=True)), buf, rule)
    expected = torch.autograd.grad(val_loss(model, replay), list(teacher.parameters()))
    got = reverse(model, teacher, rule, theta, v, records[4 - back :])
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) < 1e-9


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_recovered_states_match_stored_copies(dtype, tolerance):
    """Running the steps backwards recovers theta_t and v_t. The documented tolerance is the
    largest error relative to the largest entry after 5 steps back with momentum 0.9: float64
    within 1e-12, float32 within 1e-4 (v_t loses a factor of 1/mu per step)."""
    rule = RULES[0]
    model, teacher = student("mlp").to(dtype), Teacher().to(dtype)
    torch.set_default_dtype(dtype)
    theta, v, states, records = unrolled(model, teacher, rule, 6)
    trace = []
    reverse(model, teacher, rule, theta, v, records[1:], trace)
    for (theta_t, v_t), (stored_theta, stored_v) in zip(trace, reversed(states[1:]), strict=True):
        for k in stored_theta:
            assert relative_error(theta_t[k], stored_theta[k]) < tolerance
            assert relative_error(v_t[k], stored_v[k]) < tolerance


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_one_step_back_equals_the_core_jvp_route(kind):
    """K = B = 1: d = A^T grad R(theta') from the core's look-ahead, then the teacher surrogate
    over per-example tangents; it must equal the reverse-mode gradient."""
    rule = RULES[1]
    model, teacher = student(kind), Teacher()
    x, y = batch(model, 0)
    theta = {k: p.detach() for k, p in model.named_parameters()}
    velocity = {k: torch.randn_like(p) * 0.1 for k, p in theta.items()}
    loss = objective(model, teacher, x, y)
    params = {k: p.detach().requires_grad_() for k, p in theta.items()}
    grads = dict(zip(params, torch.autograd.grad(loss(params), list(params.values())), strict=True))
    theta1, v1 = sgd_step(theta, grads, velocity, rule)
    got = reverse(model, teacher, rule, theta1, v1, [Step(rule.lr, loss)])

    # The core's route on the real model at theta with momentum buffers `velocity`.
    vx, vy = batch(model, 99, 16)
    direction, _ = lookahead_direction(model, rule, velocity, grads, vx, vy)
    per_example = lambda out: F.cross_entropy(out, y, reduction="none")  # noqa: E731
    losses, tangents = forward_with_tangent(model, x, direction, per_example)
    weights = teacher(model(x), y)
    surrogate = teacher_surrogate(weights_loss, losses, tangents, weights)
    expected = torch.autograd.grad(surrogate, list(teacher.parameters()))
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) < 1e-10


@pytest.mark.parametrize("rule", [SGDRule(0.1), RULES[1]])
def test_stored_parameters_route_equals_autograd(rule):
    """The option that keeps every theta_t (plain SGD has nothing to run backwards) gives the
    same gradient as autograd through the unrolled steps."""
    model, teacher = student("mlp"), Teacher()
    theta, v, states, records = unrolled(model, teacher, rule, 4)
    expected = torch.autograd.grad(val_loss(model, theta), list(teacher.parameters()))
    theta_k = {k: p.detach().requires_grad_() for k, p in theta.items()}
    val_grad = torch.autograd.grad(val_loss(model, theta_k), list(theta_k.values()))
    got = backward_through_steps(
        theta,
        v,
        records,
        rule,
        dict(zip(theta_k, val_grad, strict=True)),
        list(teacher.parameters()),
        stored=[s[0] for s in states],
    )
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) < 1e-9


def final_val_grad(model, theta):
    theta_k = {k: p.detach().requires_grad_() for k, p in theta.items()}
    grads = torch.autograd.grad(val_loss(model, theta_k), list(theta_k.values()))
    return dict(zip(theta_k, grads, strict=True))


SEGMENT_RULES = [
    SGDRule(0.1),
    SGDRule(0.1, 0.9, weight_decay=1e-2),
    SGDRule(0.05, 0.9, nesterov=True),
    AdamRule(0.01),
    AdamRule(0.01, 0.8, 0.99, 1e-6, weight_decay=1e-2),
    AdamRule(0.02, weight_decay=0.1, decoupled=True),
]


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize("rule", SEGMENT_RULES)
@pytest.mark.parametrize("every", [1, 2, 3, 5])
def test_segments_route_equals_autograd_through_all_steps(kind, rule, every):
    """Checkpoints every 1, 2, 3 or 5 of 5 steps (a short last segment included), with the
    learning rate changing between steps and the teacher read through the student (deep)."""
    model, teacher = student(kind), Teacher()
    lrs = [rule.lr, rule.lr, rule.lr / 2, rule.lr / 2, rule.lr / 4]
    theta, _, before, records = unrolled(model, teacher, rule, 5, deep=True, lrs=lrs)
    expected = torch.autograd.grad(val_loss(model, theta), list(teacher.parameters()))
    checkpoints = before[::every]
    got = backward_by_segments(
        checkpoints, every, records, rule, final_val_grad(model, theta), list(teacher.parameters())
    )
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) < 1e-9


def test_segments_route_is_exact_at_long_horizons_in_float32():
    """T = 300 steps of momentum SGD in float32 (where running them backwards is useless):
    checkpoints every 18 steps against the route that keeps every theta_t."""
    torch.set_default_dtype(torch.float32)
    rule = SGDRule(0.1, 0.9)
    model, teacher = student("mlp"), Teacher()
    theta, _, before, records = unrolled(model, teacher, rule, 300)
    theta = {k: p.detach() for k, p in theta.items()}
    val_grad = final_val_grad(model, theta)
    params = list(teacher.parameters())
    stored = backward_through_steps(
        theta, {}, records, rule, val_grad, params, stored=[b[0] for b in before]
    )
    segments = backward_by_segments(before[::18], 18, records, rule, val_grad, params)
    flat = [torch.cat([g.reshape(-1) for g in grads]) for grads in (segments, stored)]
    assert F.cosine_similarity(*flat, dim=0) > 0.999
    assert relative_error(flat[0], flat[1]) < 1e-3


def test_running_backwards_refuses_long_horizons():
    model, teacher = student("mlp"), Teacher()
    theta = {k: p.detach() for k, p in model.named_parameters()}
    steps = [Step(0.1, objective(model, teacher, *batch(model, 0)))] * (REVERSAL_LIMIT + 1)
    with pytest.raises(ValueError, match="backward_by_segments"):
        backward_through_steps(theta, {}, steps, RULES[0], theta, list(teacher.parameters()))
