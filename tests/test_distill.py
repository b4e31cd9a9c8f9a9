"""Distillation methods on a tiny BERT in float64: LGTM's distillation influence against
per-example gradients computed one example at a time, its finite difference converging to it,
and Meta Distill's teacher gradient against double backward through the student's step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from pipeline.config import ScheduleSpec
from pipeline.core.meta import lookahead_loss, params_of, tangent_only
from pipeline.core.optim import sgd_step
from pipeline.core.student import Student
from pipeline.core.unroll import replayed_rng, rng_state
from pipeline.methods.base import Batch, Context
from pipeline.methods.distill import distillation_losses
from pipeline.methods.registry import METHODS
from pipeline.noise import generator
from pipeline.task import TaskData
from pipeline.text_models import TextClassifier

SCHEDULE = ScheduleSpec(epochs=1, batch_size=6, lr=0.1, momentum=0.9, weight_decay=1e-3)
CLASSES = 3


def tiny_bert(seed: int, dropout: float = 0.0) -> TextClassifier:
    torch.manual_seed(seed)
    model = TextClassifier(
        10, CLASSES, weights="none", hidden=16, layers=2, heads=2, vocab_size=110, dropout=dropout
    )
    return model.double()


def token_ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (n, 10), generator=g)  # no pad, no [SEP] (102)
    ids[:, 0] = 1
    ids[: n // 2, 7:] = 0  # padded examples
    return ids


@pytest.fixture
def task() -> TaskData:
    x = token_ids(24, 0)
    y = torch.arange(24) % CLASSES
    return TaskData(
        x[:12], y[:12], y[:12], x[12:18], y[12:18], x[18:], y[18:], CLASSES, list("abc")
    )


def make(name: str, data: TaskData, dropout: float = 0.0, **kw):
    """The method `name` with a tiny student (dropout: the student's; the teacher has none)."""
    student = Student(tiny_bert(0, dropout), SCHEDULE, 10)
    ctx = Context(student, data, SCHEDULE, generator("m", 0))
    ctx.pretrained["t"] = tiny_bert(1).requires_grad_(False).eval()
    cls = METHODS[name]
    return cls(cls.Settings(teacher="t", **kw), ctx)


def test_distillation_objectives():
    t, s = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    ce = distillation_losses(t, s, "ce", 2.0)
    expected = -(F.softmax(t / 2, 1) * F.log_softmax(s / 2, 1)).sum(1) * 4
    torch.testing.assert_close(ce, expected)
    torch.testing.assert_close(distillation_losses(t, s, "mse", 1.0), ((t - s) ** 2).mean(1))
    # DIST is zero for identical distributions and positive otherwise
    assert distillation_losses(t, t, "dist", 1.0).abs().max() < 1e-12
    assert (distillation_losses(t, s, "dist", 1.0) > 0).all()


def influences_one_by_one(method, batch: Batch, teacher_logits, v) -> torch.Tensor:
    """<grad_theta D_i(T_i, S_i), v>: each example's gradient by its own backward."""
    model = method.student.model
    params = params_of(model)
    out = []
    for i in range(len(batch.y)):
        loss = method.distill(teacher_logits[i : i + 1], model(batch.x[i : i + 1]))
        grads = torch.autograd.grad(loss, list(params.values()))
        out.append(sum((g * v[k]).sum() for g, k in zip(grads, params, strict=True)))
    return torch.stack(out)


def test_exact_influence_equals_per_example_gradient_products(task):
    method = make("lgtm", task, influence="jvp", temperature=2.0)
    batch = Batch(task.train_x[:6], task.train_y[:6], torch.arange(6))
    teacher_logits = method.teacher(batch.x).detach()
    v = {k: torch.randn_like(p) for k, p in params_of(method.student.model).items()}
    slow = influences_one_by_one(method, batch, teacher_logits, v)

    def per_example(out):
        return distillation_losses(teacher_logits, out, "ce", 2.0)

    _, fast = tangent_only(method.student.model, batch.x, v, head=per_example)
    assert slow.abs().min() > 1e-6  # a real signal
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_influence_teacher_gradient_and_finite_difference(task, dropout):
    """The jvp route's teacher gradient equals double backward of
    -(1/B) sum_i <grad_theta D_i(T(omega)), v> (and so does the double_backward route); the
    finite difference converges to it. With dropout, every route replays the masks of the
    student's forward."""
    batch = Batch(task.train_x[:6], task.train_y[:6], torch.arange(6))

    torch.manual_seed(3)
    exact = make("lgtm", task, dropout, influence="jvp")
    model = exact.student.model
    v = {k: torch.randn_like(p) for k, p in params_of(model).items()}
    rng = rng_state(torch.device("cpu"))
    logits = model(batch.x)

    def grad_of(value, teacher):
        grads = torch.autograd.grad(value, list(teacher.parameters()))
        return torch.cat([g.reshape(-1) for g in grads])

    fast = grad_of(
        exact.influence(batch.x, logits.detach(), exact.teacher(batch.x), v, rng), exact.teacher
    )
    # the slow way: the gradient in theta with a graph, dotted with v, then differentiated
    teacher_logits = exact.teacher(batch.x)
    params = params_of(model)
    with torch.enable_grad(), replayed_rng(rng):
        loss = exact.distill(teacher_logits, model(batch.x))
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        dot = sum((g * v[k]).sum() for g, k in zip(grads, params, strict=True))
    slow = grad_of(-dot, exact.teacher)
    assert slow.norm() > 1e-6
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-13)
    # the method's own double-backward route (the timing reference) is that same computation
    reference = make("lgtm", task, dropout, influence="double_backward")
    reference.teacher.load_state_dict(exact.teacher.state_dict())
    x, t = batch.x, reference.teacher(batch.x)
    routed = grad_of(reference.influence(x, logits.detach(), t, v, rng), reference.teacher)
    torch.testing.assert_close(routed, slow, rtol=1e-12, atol=1e-15)

    errors = []
    for eps in (1e-1, 1e-2, 1e-3):
        fd = make("lgtm", task, dropout, influence="fd", epsilon=eps)
        fd.teacher.load_state_dict(exact.teacher.state_dict())
        grad = grad_of(
            fd.influence(batch.x, logits.detach(), fd.teacher(batch.x), v, rng), fd.teacher
        )
        errors.append(float((grad - slow).norm() / slow.norm()))
    assert errors[0] > errors[1] > errors[2]  # central differences: error O(eps^2)
    assert errors[2] < 1e-6, errors


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_meta_distill_teacher_gradient_is_double_backward(task, dropout):
    """dR(theta')/domega with theta' = step(theta, grad L_s(omega)), by the core's JVP route,
    against double backward through the virtual step (float64). With dropout, both draw the
    same masks from the same seed; the JVP replays the student forward's."""
    method = make("meta_distill", task, dropout, alpha=0.7, temperature=2.0)
    model, student = method.student.model, method.student
    batch = Batch(task.train_x[:6], task.train_y[:6], torch.arange(6))
    method.step(Batch(task.train_x[6:], task.train_y[6:], torch.arange(6, 12)))  # momentum
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    vx, vy = task.val_x, task.val_y
    method.ctx.generator.manual_seed(5)

    # slow: L_s(omega) -> grads with a graph -> theta' -> R(theta'), differentiated in omega
    teacher_logits = method.teacher(batch.x)  # no dropout: draws nothing
    params = params_of(model)
    torch.manual_seed(7)
    loss = method.student_loss(model(batch.x), teacher_logits, batch.y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    grads = dict(zip(params, grads, strict=True))
    r = lookahead_loss(model, student.rule(), student.optimizer_state(), grads, vx, vy)
    t_params = list(method.teacher.parameters())
    slow = torch.autograd.grad(r, t_params)

    # fast: one real step with the optimiser swapped for plain gradient capture
    captured = {}

    def capture(loss):
        captured["grads"] = torch.autograd.grad(loss, t_params)

    method.update_teacher = capture
    method.val_batch = lambda size=None: (vx, vy)
    torch.manual_seed(7)
    method.step(batch)
    for fast_g, slow_g in zip(captured["grads"], slow, strict=True):
        torch.testing.assert_close(fast_g, slow_g, rtol=1e-9, atol=1e-14)
    assert sum(float(g.abs().sum()) for g in slow) > 1e-8
    assert all(torch.equal(teacher_before[k], v) for k, v in method.teacher.state_dict().items())


def test_lgtm_updates_teacher_before_student(task):
    """Algorithm 1: the student's real step uses the teacher as updated in the same step."""
    method = make("lgtm", task)
    batch = Batch(task.train_x[:6], task.train_y[:6], torch.arange(6))
    seen = {}
    update = method.student.update

    def spy(loss):
        seen["teacher"] = {k: v.clone() for k, v in method.teacher.state_dict().items()}
        update(loss)

    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    method.student.update = spy
    logged = method.step(batch)
    changed = [k for k in before if not torch.equal(before[k], seen["teacher"][k])]
    assert changed and set(logged) >= {"loss", "influence", "teacher_ce", "val_loss"}


def test_virtual_step_is_the_students_rule(task):
    """LGTM's v is the validation gradient at the real optimiser's look-ahead point (after a
    real step, so the momentum buffers are part of it)."""
    method = make("lgtm", task)
    method.step(Batch(task.train_x[:6], task.train_y[:6], torch.arange(6)))
    model, momentum = method.student.model, method.student.optimizer_state()
    assert momentum
    grads = {k: torch.randn_like(p) for k, p in params_of(model).items()}
    method.val_batch = lambda size=None: (task.val_x, task.val_y)
    v, r = method.validation_gradient(grads)
    theta = {k: p.detach() for k, p in params_of(model).items()}
    moved, _ = sgd_step(theta, grads, momentum, method.student.rule())
    moved = {k: p.requires_grad_() for k, p in moved.items()}
    loss = F.cross_entropy(functional_call(model, moved, (task.val_x,)), task.val_y)
    torch.testing.assert_close(r, loss)
    expected = torch.autograd.grad(loss, list(moved.values()))
    for k, g in zip(moved, expected, strict=True):
        torch.testing.assert_close(v[k], g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("aux_target", ["student", "teacher"])
@pytest.mark.parametrize("influence_scale", ["teacher_lr", "first_order", "one"])
def test_lgtm_teacher_objective_settings(task, aux_target, influence_scale):
    """The teacher's gradient is scale * d influence + d L_aux: L_aux fits the teacher to the
    student (the authors' code: soft cross entropy with the student's distribution as the
    target) or the paper's reading (the teacher's distribution as the target), plus
    teacher_alpha times its own cross entropy; the scale is the teacher's rate, the student's
    rate times alpha, or 1."""
    method = make(
        "lgtm", task, influence="jvp", aux_target=aux_target, influence_scale=influence_scale
    )
    batch = Batch(task.train_x[:6], task.train_y[:6], torch.arange(6))
    captured = {}
    method.update_teacher = lambda loss: captured.setdefault("loss", loss)
    method.update_student = lambda logits, batch: torch.tensor(0.0)
    method.val_batch = lambda size=None: (task.val_x, task.val_y)
    method.step(batch)
    teacher = list(method.teacher.parameters())
    got = torch.autograd.grad(captured["loss"], teacher)

    teacher_logits, logits, rng, grads = method.training_forward(batch)
    v, _ = method.validation_gradient(grads)
    influence = method.influence(batch.x, logits.detach(), teacher_logits, v, rng)
    s, t, z = method.settings, teacher_logits, logits.detach()
    target, prediction = (z, t) if aux_target == "student" else (t, z)
    soft_ce = -(target.softmax(1) * prediction.log_softmax(1)).sum(1).mean()
    aux = s.teacher_alpha * F.cross_entropy(t, batch.y) + (1 - s.teacher_alpha) * soft_ce
    scale = {"teacher_lr": s.teacher_lr, "first_order": SCHEDULE.lr * s.alpha, "one": 1.0}
    expected = torch.autograd.grad(scale[influence_scale] * influence + aux, teacher)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-14)
