"""Meta Pseudo Labels: the exact teacher gradient is double backward through the student's
step (float64); the first-order variant is its own definition; settings pair route and
label kind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_methods import batch_of, digits_task, make_method

from pipeline.config import NoiseSpec, ParamsError, build
from pipeline.core.meta import lookahead_loss, params_of
from pipeline.methods.registry import METHODS
from pipeline.train import batches, steps_per_epoch


@pytest.fixture(scope="module")
def few64():
    return digits_task(NoiseSpec(kind="few_labels", labels=100), torch.float64)


def recording(method) -> list:
    """Replace the teacher's optimiser step by a record of its gradients."""
    grads: list = []
    method.optimizer.step = lambda: grads.append(
        [p.grad.clone() for p in method.teacher.parameters()]
    )
    return grads


def fixed_labelled_batch(method, data, n: int = 40):
    method.val_index = lambda size=None: torch.arange(n)
    return data.val_x[:n], data.val_y[:n]


def test_exact_teacher_gradient_is_double_backward_through_the_step(few64):
    method = make_method("mpl", few64, arch="mlp", dtype=torch.float64, temperature=2.0)
    vx, vy = fixed_labelled_batch(method, few64)
    method.step(batch_of(few64, 0))  # momentum and a moved teacher: every path active
    grads = recording(method)
    batch = batch_of(few64, 32)
    model, student, teacher = method.student.model, method.student, method.teacher
    rule, momentum = student.rule(), dict(student.optimizer_state())

    # the reference: R(theta'(omega)) + CE(T(x_l), y_l), by double backward
    t_logits = teacher(torch.cat([batch.x, vx]))
    q = F.softmax(t_logits[:32] / 2.0, 1)
    params = params_of(model)
    loss = -(q * F.log_softmax(model(batch.x), 1)).sum(1).mean()
    g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    r_after = lookahead_loss(model, rule, momentum, dict(zip(params, g, strict=True)), vx, vy)
    supervised = F.cross_entropy(t_logits[32:], vy)
    expected = torch.autograd.grad(
        r_after + supervised, list(teacher.parameters()), retain_graph=True
    )
    alone = torch.autograd.grad(supervised, list(teacher.parameters()))

    method.step(batch)
    for a, b, c in zip(grads[0], expected, alone, strict=True):
        assert (a - b).abs().max() <= 1e-10 * b.abs().max()
        assert (a - c).abs().max() > 1e-4 * c.abs().max()  # the meta term is really there


def test_first_order_variant_is_its_definition(few64):
    method = make_method(
        "mpl", few64, arch="mlp", dtype=torch.float64, route="first_order", pseudo_labels="hard"
    )
    vx, vy = fixed_labelled_batch(method, few64)
    grads = recording(method)
    drawn = []
    sample = method.pseudo_labels
    method.pseudo_labels = lambda logits: drawn.append(sample(logits)) or drawn[-1]
    batch = batch_of(few64, 0)
    teacher = method.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    r_before = method.labelled_loss(vx, vy)
    method.step(batch)
    r_after = method.labelled_loss(vx, vy)

    y_hat = drawn[0]
    assert torch.equal(y_hat.sum(1), torch.ones(32, dtype=y_hat.dtype))  # one-hot samples
    teacher.load_state_dict(before)
    t_logits = teacher(torch.cat([batch.x, vx]))
    ce_hard = -(y_hat * F.log_softmax(t_logits[:32], 1)).sum(1).mean()
    total = (r_before - r_after) * ce_hard + F.cross_entropy(t_logits[32:], vy)
    expected = torch.autograd.grad(total, list(teacher.parameters()))
    for a, b in zip(grads[0], expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    assert float(r_before) != float(r_after)  # the student moved


def test_route_and_label_kind_pair():
    with pytest.raises(ParamsError, match="methods.mpl.pseudo_labels"):
        build(METHODS["mpl"].Settings, {"pseudo_labels": "hard"}, "methods.mpl")
    with pytest.raises(ParamsError, match="methods.mpl.pseudo_labels"):
        build(METHODS["mpl"].Settings, {"route": "first_order"}, "methods.mpl")


def test_unlabelled_examples_reach_only_methods_that_read_them(few64):
    assert (few64.train_y == -1).all()
    with pytest.raises(ValueError, match="labelled training examples"):
        steps_per_epoch(few64, 32)
    n = steps_per_epoch(few64, 32, unlabelled=True)
    assert n == len(few64.train_y) // 32
    seen = [b.y for b in batches(few64, 32, 0, 0, "none", unlabelled=True)]
    assert len(seen) == n and all((y == -1).all() for y in seen)
