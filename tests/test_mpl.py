"""Meta Pseudo Labels: the exact teacher gradient is double backward through the student's
step (float64); the first-order variant is its own definition; settings pair route and
label kind."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from test_methods import SCHEDULE, batch_of, digits_task, make_method

from pipeline.config import NoiseSpec, ParamsError, ScheduleSpec, build
from pipeline.core.meta import lookahead_loss, params_of
from pipeline.core.student import Student, scheduled_lr
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


@pytest.mark.parametrize("labels", ["hard", "sampled"])
def test_first_order_variant_is_its_definition(few64, labels):
    method = make_method(
        "mpl", few64, arch="mlp", dtype=torch.float64, route="first_order", pseudo_labels=labels
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


# --- the authors' codes' protocol: student wait, schedules, ratio, argmax labels ------------


def test_cosine_schedule_rates_at_given_steps():
    """Warm-up (the project's linear ramp), then half a cosine from lr to 0 over the steps
    left; with a wait the rate is 0 first and the schedule starts when the wait ends."""
    rate = lambda step, **kw: scheduled_lr(0.2, step, 110, decay="cosine", **kw)  # noqa: E731
    assert rate(0) == pytest.approx(0.2)
    assert rate(55) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert rate(109) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 109 / 110)))
    assert rate(4, warmup=10) == pytest.approx(0.2 * 5 / 10)
    assert rate(10, warmup=10) == pytest.approx(0.2)  # the cosine starts at its top
    assert rate(60, warmup=10) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert rate(9, wait=10) == 0.0
    assert rate(10, wait=10) == pytest.approx(0.2)
    assert rate(12, wait=10, warmup=4) == pytest.approx(0.2 * 3 / 4)  # warm-up after the wait
    assert rate(60, wait=10) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    # constant (the teacher's default) and step decay, whose milestones count after the wait
    assert scheduled_lr(0.2, 99, 110, decay="constant") == 0.2
    step = dict(decay="step", milestones=(0.5,), gamma=0.1)
    assert scheduled_lr(0.2, 54, 110, **step) == 0.2
    assert scheduled_lr(0.2, 55, 110, **step) == pytest.approx(0.02)
    assert scheduled_lr(0.2, 59, 110, wait=10, **step) == 0.2
    assert scheduled_lr(0.2, 60, 110, wait=10, **step) == pytest.approx(0.02)


def test_student_schedule_reads_cosine_from_the_schedule():
    schedule = ScheduleSpec(epochs=1, batch_size=8, lr=0.1, warmup_steps=5, lr_decay="cosine")
    student = Student(torch.nn.Linear(2, 2), schedule, 105)
    assert student.lr_at(2) == pytest.approx(0.1 * 3 / 5)
    assert student.lr_at(55) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    student.wait_steps = 5
    assert student.lr_at(4) == 0.0 and student.lr_at(5) == pytest.approx(0.1 / 5)
    with pytest.raises(ParamsError, match="schedules.s.milestones"):
        build(ScheduleSpec, {**dataclasses.asdict(schedule), "milestones": [0.5]}, "schedules.s")


def test_student_waits_while_the_teacher_learns(few64):
    """Before the wait ends the student's parameters, buffers and optimiser state stay as
    they are and the teacher learns from its labelled loss alone; then the student steps."""
    method = make_method("mpl", few64, arch="mlp", dtype=torch.float64, student_wait_steps=2)
    student, teacher = method.student, method.teacher
    start = {k: v.clone() for k, v in student.model.state_dict().items()}
    t_start = [p.detach().clone() for p in teacher.parameters()]
    vx, vy = fixed_labelled_batch(method, few64)
    for i in range(2):
        t_before = copy.deepcopy(teacher)
        grads = recording(method)
        method.step(batch_of(few64, 32 * i))
        del method.optimizer.step  # the real step again
        # the teacher's gradient is that of its own cross entropy on the labelled batch
        expected = torch.autograd.grad(
            F.cross_entropy(t_before(vx), vy), list(t_before.parameters())
        )
        for a, b in zip(grads[0], expected, strict=True):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
        method.optimizer.step()
    assert student.step_count == 2 and student.optimizer_state() == {}
    for k, v in student.model.state_dict().items():
        assert torch.equal(v, start[k])
    moved = [not torch.equal(a, b) for a, b in zip(teacher.parameters(), t_start, strict=True)]
    assert all(moved)
    method.step(batch_of(few64, 64))  # the wait is over
    assert student.step_count == 3 and student.optimizer_state()
    assert any(not torch.equal(v, start[k]) for k, v in student.model.state_dict().items())


def test_the_student_cannot_step_during_its_wait_nor_wait_for_ever(few64):
    method = make_method("mpl", few64, arch="mlp", dtype=torch.float64, student_wait_steps=1)
    loss = method.student.model(few64.train_x[:4]).sum()
    with pytest.raises(RuntimeError, match="waits"):
        method.student.update(loss)
    with pytest.raises(ValueError, match="student_wait_steps 100"):
        make_method("mpl", few64, arch="mlp", student_wait_steps=100)  # the run's 100 steps


def test_teacher_rate_follows_its_warm_up_and_cosine(few64):
    method = make_method(
        "mpl",
        few64,
        arch="mlp",
        dtype=torch.float64,
        teacher_lr=0.3,
        teacher_warmup_steps=4,
        teacher_lr_decay="cosine",
    )
    seen = []
    step = method.optimizer.step
    method.optimizer.step = lambda: seen.append(method.optimizer.param_groups[0]["lr"]) or step()
    for i in range(3):
        method.step(batch_of(few64, 32 * i))
    assert seen == pytest.approx([0.3 / 4, 0.3 * 2 / 4, 0.3 * 3 / 4])
    assert method.teacher_lr(52) == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    # the default: constant at teacher_lr
    assert make_method("mpl", few64, arch="mlp").teacher_lr(77) == 0.05


def test_unlabelled_ratio_sets_the_labelled_batch(few64):
    """Each step reads the schedule's batch of unlabelled examples and batch // ratio labelled
    ones (SCHEDULE: batch 32; ratio 4: 8 labelled)."""
    method = make_method("mpl", few64, arch="mlp", dtype=torch.float64, unlabelled_ratio=4)
    sizes = []
    teacher_forward = method.teacher.forward
    method.teacher.forward = lambda x: sizes.append(len(x)) or teacher_forward(x)
    drawn = []
    val_index = method.val_index
    method.val_index = lambda size=None: drawn.append(val_index(size)) or drawn[-1]
    method.step(batch_of(few64, 0, 32))
    assert len(drawn[0]) == 8 and sizes == [32 + 8]
    assert make_method("mpl", few64, arch="mlp").labelled_batch is None  # the schedule's
    settings = METHODS["mpl"].Settings
    with pytest.raises(ParamsError, match="methods.m.unlabelled_ratio"):
        build(settings, {"unlabelled_ratio": 7, "val_batch_size": 10}, "methods.m")
    with pytest.raises(ParamsError, match="methods.m.unlabelled_ratio"):
        settings(unlabelled_ratio=33).check_schedule("methods.m", SCHEDULE, "experiments.e")


def test_hard_labels_are_the_teachers_argmax_and_sampled_labels_are_draws(few64):
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 2.9]] * 500, dtype=torch.float64)
    hard = make_method(
        "mpl", few64, arch="mlp", route="first_order", pseudo_labels="hard"
    ).pseudo_labels(logits)
    assert torch.equal(hard.argmax(1), torch.tensor([1, 0] * 500))
    assert torch.equal(hard.sum(1), torch.ones(1000, dtype=hard.dtype))
    sampled = make_method(
        "mpl", few64, arch="mlp", route="first_order", pseudo_labels="sampled"
    ).pseudo_labels(logits)
    assert torch.equal(sampled.sum(1), torch.ones(1000, dtype=sampled.dtype))
    share = sampled[0::2].mean(0)  # draws from softmax([0, 2, 1]): (0.09, 0.67, 0.24)
    assert share[1] == pytest.approx(0.665, abs=0.05) and share[2] > 0.15
    with pytest.raises(ParamsError, match="methods.mpl.pseudo_labels"):
        build(METHODS["mpl"].Settings, {"pseudo_labels": "sampled"}, "methods.mpl")


def test_the_teacher_is_scored_beside_the_student(few64):
    method = make_method("mpl", few64, arch="mlp", dtype=torch.float64)
    method.step(batch_of(few64, 0))
    figures = method.validation_metrics(torch.zeros(0), few64.val_x, few64.val_y)
    t = method.teacher.eval()(few64.val_x)
    assert figures["teacher_val_acc"] == pytest.approx(
        float((t.argmax(1) == few64.val_y).double().mean()), abs=1e-6
    )
    assert set(figures) == {"teacher_val_loss", "teacher_val_acc"}
    assert METHODS["mpl"].scores_teacher and not METHODS["reduced_mpl"].scores_teacher
