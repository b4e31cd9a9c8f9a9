"""Oracles for the shared core, in float64 on tiny models: the functional optimiser equals
torch.optim.SGD, and every meta-gradient of the JVP route equals double backward through the
virtual step taken with the real optimiser rule (Ren et al. 2018, Algorithm 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pipeline.core.meta import (
    buffer_copies,
    forward_with_tangent,
    lookahead_direction,
    targets_loss,
    teacher_surrogate,
    weights_loss,
)
from pipeline.core.optim import AdamRule, SGDRule, adam_state, momentum_buffers, sgd_step
from pipeline.core.traced import forward_with_tangent_traced, traced

RULES = [
    SGDRule(0.1),
    SGDRule(0.1, 0.9),
    SGDRule(0.05, 0.9, nesterov=True, weight_decay=5e-3),
    SGDRule(0.1, 0.5, weight_decay=1e-2),
]


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def batch(model: nn.Module, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 6) if isinstance(model[0], nn.Linear) else (n, 1, 8, 8)
    return torch.randn(shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def warm_optimizer(model: nn.Module, rule: SGDRule) -> torch.optim.SGD:
    """An optimiser with momentum buffers from two real steps, so the look-ahead must use them."""
    opt = torch.optim.SGD(
        model.parameters(),
        lr=rule.lr,
        momentum=rule.momentum,
        nesterov=rule.nesterov,
        weight_decay=rule.weight_decay,
    )
    for seed in (10, 11):
        x, y = batch(model, 8, seed)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("rule", RULES)
def test_sgd_step_matches_torch_optim(rule):
    torch.manual_seed(0)
    model = mlp()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(
        model.parameters(),
        lr=rule.lr,
        momentum=rule.momentum,
        nesterov=rule.nesterov,
        weight_decay=rule.weight_decay,
    )
    buffers: dict = {}
    names = {p: k for k, p in model.named_parameters()}
    for seed in range(4):
        x, y = batch(model, 8, seed)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        assert SGDRule.of(opt) == rule
        params, buffers = sgd_step(params, grads, buffers, rule)
        opt.step()
        for k, p in model.named_parameters():
            assert torch.equal(params[k], p.detach()), (k, seed)
        if rule.momentum:
            torch_buffers = momentum_buffers(opt, names)
            assert all(torch.equal(buffers[k], torch_buffers[k]) for k in buffers)


ADAM_RULES = [
    (torch.optim.Adam, {"lr": 1e-3}, AdamRule(1e-3)),
    (
        torch.optim.Adam,
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01},
        AdamRule(0.01, 0.8, 0.99, 1e-6, 0.01),
    ),
    (torch.optim.AdamW, {"lr": 3e-3}, AdamRule(3e-3, weight_decay=0.01, decoupled=True)),
    (
        torch.optim.AdamW,
        {"lr": 0.02, "weight_decay": 0.1},
        AdamRule(0.02, weight_decay=0.1, decoupled=True),
    ),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("optimizer", "options", "rule"), ADAM_RULES)
def test_adam_step_matches_torch_optim(dtype, optimizer, options, rule):
    """Bit-identical to torch.optim.Adam / AdamW over six steps, on a ReLU convnet whose
    never-active units keep exactly-zero gradients (the second moment stays 0 there)."""
    torch.manual_seed(0)
    model = convnet().to(dtype)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = optimizer(model.parameters(), **options)
    assert AdamRule.of(opt) == rule
    state: dict = {}
    names = {p: k for k, p in model.named_parameters()}
    for seed in range(6):
        x, y = batch(model, 8, seed)
        opt.zero_grad()
        F.cross_entropy(model(x.to(dtype)), y).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        params, state = rule.step(params, grads, state)
        opt.step()
        for k, p in model.named_parameters():
            assert torch.equal(params[k], p.detach()), (k, seed)
        reference = adam_state(opt, names)
        assert state.keys() == reference.keys()
        assert all(
            torch.equal(state[k], reference[k]) if k != "step" else state[k] == reference[k]
            for k in state
        )


def test_adam_meta_gradient_is_finite_through_zero_second_moments():
    """d theta' / d grad through a step where some gradients are exactly 0 (v = 0): finite."""
    theta = {"w": torch.tensor([1.0, 2.0])}
    grads = {"w": torch.tensor([0.0, 0.5], requires_grad=True)}
    new, _ = AdamRule(0.1).step(theta, grads, {})
    (d,) = torch.autograd.grad(new["w"].sum(), grads["w"])
    assert torch.isfinite(d).all()


def test_adam_takes_the_same_step_with_and_without_a_derivative_through_it():
    """The plain sqrt of a step no derivative goes through equals the guarded one, zeros
    included: the same new parameters and moments, bit for bit."""
    g = torch.Generator().manual_seed(0)
    theta = {"w": torch.randn(64, 33, generator=g)}
    grad = torch.randn(64, 33, generator=g).masked_fill(torch.rand(64, 33, generator=g) < 0.2, 0)
    with torch.no_grad():
        plain, plain_state = AdamRule(0.1).step(theta, {"w": grad}, {})
    guarded, guarded_state = AdamRule(0.1).step(theta, {"w": grad.requires_grad_()}, {})
    assert torch.equal(plain["w"], guarded["w"].detach())
    assert torch.equal(plain_state["exp_avg_sq/w"], guarded_state["exp_avg_sq/w"].detach())


def virtual_step_reference(model, rule, momentum, signal_loss, val_x, val_y):
    """Double backward through theta' = step(theta, grad_theta L(theta, signal)), returning
    R(theta') as a differentiable function of whatever `signal_loss(params)` depends on."""
    params = {k: p.detach().clone().requires_grad_() for k, p in model.named_parameters()}
    loss = signal_loss(params)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    theta1, _ = sgd_step(params, dict(zip(params, grads, strict=True)), momentum, rule)
    out = functional_call(model, (theta1, buffer_copies(model)), (val_x,))
    return F.cross_entropy(out, val_y)


def per_example_ce(model, params, x, y):
    return F.cross_entropy(
        functional_call(model, (params, buffer_copies(model)), (x,)), y, reduction="none"
    )


@pytest.mark.parametrize("forward", [forward_with_tangent, forward_with_tangent_traced])
@pytest.mark.parametrize("make", [mlp, convnet])
@pytest.mark.parametrize("rule", RULES)
def test_l2rw_weights_equal_algorithm_1(make, rule, forward):
    """Ren et al. Alg. 1 lines 5-10 (eps = 0, double backward) vs one JVP along d, by dual
    tensors and by the traced pass (tangents outside autograd)."""
    torch.manual_seed(1)
    model = make()
    opt = warm_optimizer(model, rule)
    momentum = momentum_buffers(opt, {p: k for k, p in model.named_parameters()})
    x, y = batch(model, 12, 0)
    vx, vy = batch(model, 10, 1)

    eps = torch.zeros(12, requires_grad=True)
    R = virtual_step_reference(
        model, rule, momentum, lambda p: (eps * per_example_ce(model, p, x, y)).sum(), vx, vy
    )
    reference = torch.autograd.grad(R, eps)[0]

    zero = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    d, _ = lookahead_direction(model, rule, momentum, zero, vx, vy)
    assert forward is forward_with_tangent or traced(model) is not None  # no fallback
    _, tangent = forward(model, x, d, lambda out: F.cross_entropy(out, y, reduction="none"))
    assert relative_error(tangent, reference) < 1e-10


class WeightTeacher(nn.Module):
    """A teacher producing per-example weights from the student's per-example losses."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1))

    def forward(self, losses):
        return torch.sigmoid(self.net(losses[:, None])).squeeze(1)


class TargetTeacher(nn.Module):
    """A teacher producing target distributions over 3 classes from the inputs."""

    def __init__(self, in_features):
        super().__init__()
        self.net = nn.Linear(in_features, 3)

    def forward(self, x):
        return torch.softmax(self.net(x.flatten(1)), -1)


class CoefficientTeacher(nn.Module):
    """DLF-style: a 3x3 coefficient matrix Phi = W softmax(V s) from a state vector s."""

    def __init__(self):
        super().__init__()
        self.V = nn.Linear(4, 5, bias=False)
        self.W = nn.Parameter(torch.randn(9, 5))

    def forward(self, state):
        return (self.W @ torch.softmax(self.V(state), -1)).view(3, 3)


def dlf_loss(y):
    def loss(log_p, phi):  # l_Phi(p, y) = -sigmoid(y' Phi log p), mean over the batch
        onehot = F.one_hot(y, 3).to(log_p.dtype)
        return -torch.sigmoid(((onehot @ phi) * log_p).sum(-1)) / len(y)

    return loss


SIGNALS = ["weights", "targets", "coefficients"]


def make_signal(kind, model, x, y):
    """(teacher, signal(params_or_None) -> signal tensor, student output head, loss(z, s))."""
    torch.manual_seed(7)
    if kind == "weights":
        teacher = WeightTeacher()
        losses = F.cross_entropy(model(x), y, reduction="none").detach()
        return (
            teacher,
            lambda: teacher(losses) / len(y),
            lambda out: F.cross_entropy(out, y, reduction="none"),
            weights_loss,
        )
    if kind == "targets":
        teacher = TargetTeacher(x[0].numel())
        return teacher, lambda: teacher(x), lambda out: out, targets_loss
    teacher = CoefficientTeacher()
    state = torch.rand(4)
    return teacher, lambda: teacher(state), lambda out: torch.log_softmax(out, -1), dlf_loss(y)


@pytest.mark.parametrize("make", [mlp, convnet])
@pytest.mark.parametrize("kind", SIGNALS)
def test_teacher_gradient_equals_double_backward(make, kind):
    """A teacher network's gradient through the student's virtual step, for the three kinds
    of signal, by the JVP surrogate and by double backward."""
    torch.manual_seed(2)
    model = make()
    rule = RULES[2]
    opt = warm_optimizer(model, rule)
    momentum = momentum_buffers(opt, {p: k for k, p in model.named_parameters()})
    x, y = batch(model, 12, 0)
    vx, vy = batch(model, 10, 1)
    teacher, signal, head, loss = make_signal(kind, model, x, y)

    def train_loss(params):
        out = head(functional_call(model, (params, buffer_copies(model)), (x,)))
        return loss(out, signal()).sum()

    R = virtual_step_reference(model, rule, momentum, train_loss, vx, vy)
    reference = torch.autograd.grad(R, list(teacher.parameters()))

    params = {k: p.detach() for k, p in model.named_parameters()}
    with torch.no_grad():
        fixed = signal()
    grads0 = dict(
        zip(
            params,
            torch.autograd.grad(
                loss(
                    head(
                        functional_call(
                            model, (dict(model.named_parameters()), buffer_copies(model)), (x,)
                        )
                    ),
                    fixed,
                ).sum(),
                list(model.parameters()),
            ),
            strict=True,
        )
    )
    d, _ = lookahead_direction(model, rule, momentum, grads0, vx, vy)
    outputs, tangents = forward_with_tangent(model, x, d, head)
    surrogate = teacher_surrogate(loss, outputs, tangents, signal())
    fast = torch.autograd.grad(surrogate, list(teacher.parameters()))
    for a, b in zip(fast, reference, strict=True):
        assert relative_error(a, b) < 1e-10


def test_lookahead_leaves_batch_norm_statistics_alone():
    torch.manual_seed(3)
    model = convnet()
    before = {k: b.clone() for k, b in model.named_buffers()}
    rule = RULES[1]
    zero = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    vx, vy = batch(model, 10, 1)
    lookahead_direction(model, rule, {}, zero, vx, vy)
    assert all(torch.equal(before[k], b) for k, b in model.named_buffers())
    x, y = batch(model, 12, 0)
    forward_with_tangent(model, x, zero)  # the real training forward: one update
    reference = convnet()
    reference.load_state_dict({**model.state_dict(), **before})
    reference(x)
    assert all(torch.equal(b, dict(reference.named_buffers())[k]) for k, b in model.named_buffers())


@pytest.mark.parametrize(
    ("lr", "found"),
    [
        (0.1, "step 1: the gradient of weight is not finite"),  # d sqrt(|w|) / dw at w = 0
        (1e308, "step 1: the parameter of weight is not finite"),  # 1e308 * 10 overflows
    ],
)
def test_the_update_refuses_a_non_finite_gradient_or_parameter(lr, found):
    from pipeline.config import ScheduleSpec
    from pipeline.core.student import NonFinite, Student

    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight[0, 0] = 0.0
    before = model.weight.detach().clone()
    student = Student(model, ScheduleSpec(epochs=1, batch_size=1, lr=lr, momentum=0.0), 1)
    sqrt_at_0 = model.weight[0, 0].abs().sqrt()  # finite (0), its gradient infinite
    loss = sqrt_at_0 if lr < 1 else model(torch.full((1, 3), 10.0)).sum()
    with pytest.raises(NonFinite, match=found):
        student.update(loss)
    assert torch.equal(model.weight, before)  # nothing applied


def test_the_finite_screen_passes_an_overflowing_sum_and_names_the_bad_tensor():
    from pipeline.core.student import NonFinite, first_bad

    big = torch.full((4,), 3e38)  # every element finite, its float32 sum infinite
    first_bad("gradient", {"big": big, "small": torch.ones(2)}, 1)  # does not raise
    with pytest.raises(NonFinite, match="step 7: the gradient of late is not finite"):
        first_bad("gradient", {"big": big, "late": torch.tensor([1.0, float("nan")])}, 7)
    with pytest.raises(NonFinite, match="the parameter of mixed is not finite"):  # inf - inf
        first_bad("parameter", {"mixed": torch.tensor([float("inf"), -float("inf")])}, 2)
    first_bad("gradient", {}, 1)
