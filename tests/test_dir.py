"""DIR (deep-interactions reweighting) and the baselines of its tables, on real tiny data: the
teacher gradient of a real training window equals autograd through the unrolled steps, the
teacher's inputs are the ones the paper names, and the baselines weight as defined."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_methods import batch_of, digits_task, make_method
from torch.func import functional_call

from pipeline.config import NoiseSpec, ParamsError, build
from pipeline.core.optim import SGDRule, sgd_step
from pipeline.methods.mwn import batch_normalised
from pipeline.methods.registry import METHODS


@pytest.fixture(scope="module")
def noisy64():
    return digits_task(NoiseSpec(kind="uniform", rate=0.4, val_size=100), torch.float64)


def captured_teacher_gradient(method):
    """Run the method until its first teacher update and return the gradient it applied."""
    grads = []
    method.optimizer.step = lambda: grads.append(
        [p.grad.clone() for p in method.teacher.parameters()]
    )
    i = 0
    while not grads:
        method.step(batch_of(method.ctx.data, 32 * i))
        i += 1
    return grads[0]


def unrolled_oracle(method, data, steps: int, back: int, deeper: bool):
    """Autograd through the window's last `back` real steps, replayed functionally in float64
    from the parameters and momentum the real run had: the reference for Algorithm 1."""
    model, teacher = method.student.model, method.teacher
    c = data.num_classes
    theta = {k: p.detach().clone() for k, p in model.named_parameters()}
    v: dict = {}
    lr = method.student.lr_at(0)
    states = []
    for t in range(steps):
        x, y = data.train_x[32 * t : 32 * t + 32], data.train_y[32 * t : 32 * t + 32]
        states.append((x, y))
    # replay every step without the graph to reach theta_{K-B}, v_{K-B}, then with it.
    rule = SGDRule(lr, method.ctx.schedule.momentum, weight_decay=method.ctx.schedule.weight_decay)
    for t, (x, y) in enumerate(states):
        track = t >= steps - back
        if t <= steps - back:  # the states before the window are constants
            theta = {k: p.detach().requires_grad_() for k, p in theta.items()}
            v = {k: b.detach() for k, b in v.items()}
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        logits, features, _ = functional_call(model, (theta, buffers), (x,), {"states": True})
        inputs = torch.cat([features, F.one_hot(y, c).to(features)], 1)
        w = teacher(inputs if deeper else inputs.detach())
        loss = (w * F.cross_entropy(logits, y, reduction="none")).sum()
        names = list(theta)
        grads = torch.autograd.grad(loss, [theta[k] for k in names], create_graph=track)
        theta, v = sgd_step(theta, dict(zip(names, grads, strict=True)), v, rule)
    return theta


@pytest.mark.parametrize("back, deeper", [(3, False), (2, False), (3, True)])
def test_teacher_gradient_equals_unrolled_autograd(noisy64, back, deeper):
    """A window of K = 3 real steps of momentum SGD (batch norm, weight decay): the gradient
    DIR applies to its teacher equals autograd through the last B steps replayed."""
    settings = {"interval": 3, "back": back, "deeper": deeper, "features": ("I0", "M0")}
    method = make_method("dir", noisy64, dtype=torch.float64, **settings)
    model = method.student.model
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    # a non-zero teacher so that every path carries signal
    torch.manual_seed(3)
    for p in method.teacher.parameters():
        p.data.normal_(0, 0.1)
    teacher0 = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    val_generator = method.ctx.generator.get_state()
    got = captured_teacher_gradient(method)

    model.load_state_dict(initial)
    method.teacher.load_state_dict(teacher0)
    method.ctx.generator.set_state(val_generator)
    theta = unrolled_oracle(method, noisy64, 3, back, deeper)
    vx, vy = method.val_batch()
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    val = F.cross_entropy(functional_call(model, (theta, buffers), (vx,)), vy)
    expected = torch.autograd.grad(val, list(method.teacher.parameters()))
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-14)


def test_teacher_inputs_follow_the_paper(noisy64):
    """I0 + M0 + M1: penultimate features, the one-hot label, then M1's iteration, mean loss,
    best validation accuracy, predicted label and margin; weights sum to 1 and start uniform."""
    method = make_method("dir", noisy64, dtype=torch.float64, features=("I0", "M0", "M1"))
    batch = batch_of(noisy64, 0)
    outputs = method.student.model(batch.x, states=True)
    logits, features, _ = outputs
    inputs = method.teacher_inputs(*outputs, batch.y, (0.25, 1.5, 0.75))
    c = noisy64.num_classes
    assert inputs.shape == (32, features.shape[1] + c + 4 + c)
    assert torch.equal(inputs[:, : features.shape[1]], features)
    label = inputs[:, features.shape[1] : features.shape[1] + c]
    assert torch.equal(label.argmax(1), batch.y)
    surface = inputs[:, features.shape[1] + c :]
    assert torch.equal(surface[:, :3], torch.tensor([[0.25, 1.5, 0.75]]).expand(32, 3))
    assert torch.equal(surface[:, 3:-1].argmax(1), logits.argmax(1))
    p = logits.softmax(1)
    top2 = p.topk(2, 1).values
    margin = torch.where(
        logits.argmax(1) == batch.y,
        top2[:, 0] - top2[:, 1],
        p.gather(1, batch.y[:, None]).squeeze(1) - top2[:, 0],
    )
    assert torch.allclose(surface[:, -1], margin)
    _, w, _ = method.objective_terms(outputs, batch.y, (0.25, 1.5, 0.75))
    assert torch.allclose(w, torch.full_like(w, 1 / 32))


def test_loss_feature_is_each_examples_cross_entropy_on_its_given_label(noisy64):
    method = make_method("dir", noisy64, dtype=torch.float64, features=("M0", "L"))
    batch = batch_of(noisy64, 0)
    outputs = method.student.model(batch.x, states=True)
    inputs = method.teacher_inputs(*outputs, batch.y, (0.25, 1.5, 0.75))
    expected = -outputs[0].log_softmax(1).gather(1, batch.y[:, None]).squeeze(1)
    assert inputs.shape == (32, noisy64.num_classes + 1)
    assert torch.allclose(inputs[:, -1], expected)


def test_settings_are_checked():
    with pytest.raises(ParamsError, match="back"):
        build(METHODS["dir"].Settings, {"interval": 2, "back": 3}, "methods.dir")
    with pytest.raises(ParamsError, match="features"):
        build(METHODS["dir"].Settings, {"features": ["I0", "M7"]}, "methods.dir")


def test_missing_internal_state_is_an_error(noisy64):
    with pytest.raises(ValueError, match="I0-I0"):
        make_method("dir", noisy64, arch="mlp", dtype=torch.float64, features=("I2", "M0"))


@pytest.mark.parametrize("normalise", [True, False])
@pytest.mark.parametrize("route", ["jvp", "jvp_traced"])
def test_meta_weight_net_gradient_equals_double_backward(noisy64, route, normalise):
    """Meta-Weight-Net's teacher gradient (both routes, both scalings of the weights) equals
    double backward through the virtual step of the real optimiser (momentum and weight
    decay) in float64; with normalise the batch sum is differentiated too."""
    from pipeline.core.meta import lookahead_loss

    method = make_method(
        "mwn", noisy64, dtype=torch.float64, hidden=8, route=route, normalise=normalise
    )
    method.step(batch_of(noisy64, 0))  # momentum buffers exist from here on
    model, student = method.student.model, method.student
    batch = batch_of(noisy64, 32)
    state = method.ctx.generator.get_state()
    grads = []
    method.optimizer.step = lambda: grads.append(
        [p.grad.clone() for p in method.teacher.parameters()]
    )
    losses, tangent_of = method.training_losses(batch)
    assert (tangent_of is not None) == (route == "jvp_traced")  # the replay, not a fallback
    method.teacher_step(batch, losses, tangent_of)

    method.ctx.generator.set_state(state)
    vx, vy = method.val_batch()
    losses = F.cross_entropy(model(batch.x), batch.y, reduction="none")
    v = method.teacher(losses.detach()[:, None]).squeeze(1)
    w = v / v.sum() if normalise else v / len(v)
    named = dict(model.named_parameters())
    g = torch.autograd.grad((w * losses).sum(), list(named.values()), create_graph=True)
    val = lookahead_loss(
        model, student.rule(), student.optimizer_state(), dict(zip(named, g, strict=True)), vx, vy
    )
    expected = torch.autograd.grad(val, list(method.teacher.parameters()))
    assert any(e.abs().max() > 1e-8 for e in expected)  # the oracle is not trivially zero
    for a, b in zip(grads[0], expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-15)


def test_meta_weight_net_flat_start_is_constant_then_learns_a_direction(noisy64):
    """flat_start: every example gets the same weight at step 0 (a drawn teacher does not),
    and the meta-gradient still reaches the teacher, whose weights then differ by loss."""
    batch = batch_of(noisy64, 0)
    losses = F.cross_entropy(
        make_method("mwn", noisy64, dtype=torch.float64).student.model(batch.x),
        batch.y,
        reduction="none",
    ).detach()
    drawn = make_method("mwn", noisy64, dtype=torch.float64)
    assert drawn.raw_weights(losses).std() > 1e-6
    method = make_method("mwn", noisy64, dtype=torch.float64, flat_start=True)
    v0 = method.raw_weights(losses)
    assert torch.equal(v0, v0[:1].expand_as(v0))
    before = [p.clone() for p in method.teacher.parameters()]
    for start in (0, 32, 64):
        method.step(batch_of(noisy64, start))
    assert not torch.equal(before[2], method.teacher[2].weight)  # the zeroed layer moved
    assert method.raw_weights(losses).std() > 1e-9  # no longer constant


def test_meta_weight_net_zero_sum_guard(noisy64):
    """normalise: weights over their batch sum; a batch whose teacher outputs all underflow
    to 0 keeps zero weights (no 0 / 0) and the step goes on."""
    assert torch.equal(batch_normalised(torch.tensor([1.0, 3.0])), torch.tensor([0.25, 0.75]))
    assert torch.equal(batch_normalised(torch.zeros(3)), torch.zeros(3))
    method = make_method("mwn", noisy64, dtype=torch.float64)
    with torch.no_grad():
        method.teacher[2].bias.fill_(-1e4)  # sigmoid(-1e4) is exactly 0 in float64
    batch = batch_of(noisy64, 0)
    losses, _ = method.training_losses(batch)
    assert torch.equal(method.raw_weights(losses), torch.zeros(32, dtype=torch.float64))
    assert torch.equal(method.weights(losses), torch.zeros(32, dtype=torch.float64))
    assert method.step(batch)["loss"] == 0


def test_meta_weight_net_settings_are_checked():
    with pytest.raises(ParamsError, match="methods.mwn.nesterov"):
        build(METHODS["mwn"].Settings, {"teacher_momentum": 0.0}, "methods.mwn")
    built = build(METHODS["mwn"].Settings, {}, "methods.mwn")
    assert (built.normalise, built.nesterov, built.teacher_weight_decay) == (True, True, 5e-4)


def test_focal_loss_definition(noisy64):
    batch = batch_of(noisy64, 0)
    for gamma in (0.0, 2.0):
        method = make_method("focal", noisy64, dtype=torch.float64, gamma=gamma)
        logits = method.student.model(batch.x).detach()
        out = method.step(batch)
        p = logits.softmax(1).gather(1, batch.y[:, None]).squeeze(1)
        expected = (-((1 - p) ** gamma) * p.log()).mean()
        assert torch.allclose(out["loss"], expected)
        if gamma == 0:
            assert torch.allclose(out["loss"], F.cross_entropy(logits, batch.y))


def test_self_paced_keeps_the_easiest_examples_first(noisy64):
    method = make_method("spl", noisy64, dtype=torch.float64, start_fraction=0.25, full_at=0.5)
    batch = batch_of(noisy64, 0)
    losses = F.cross_entropy(method.student.model(batch.x), batch.y, reduction="none").detach()
    out = method.step(batch)
    assert float(out["kept"]) == 8 / 32
    easiest = losses.argsort()[:8]
    assert torch.allclose(out["loss"], losses[easiest].mean())
    method.student.step_count = 50  # half of the 100 steps: everything is kept
    assert float(method.step(batch_of(noisy64, 32))["kept"]) == 1.0
