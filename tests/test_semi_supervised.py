"""The semi-supervised baselines, the augmentations they use, and ReducedMPL: each is its
definition, and ReducedMPL's exact teacher gradient is double backward (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_methods import SCHEDULE, batch_of, digits_task

from pipeline.augment import augment, cutout
from pipeline.config import NoiseSpec, ParamsError, build
from pipeline.core.meta import lookahead_loss, params_of
from pipeline.core.student import Student
from pipeline.methods.base import Context
from pipeline.methods.reduced_mpl import distributions
from pipeline.methods.registry import METHODS
from pipeline.methods.semi_supervised import uda_consistency
from pipeline.models import build_model
from pipeline.noise import generator


@pytest.fixture(scope="module")
def few64():
    return digits_task(NoiseSpec(kind="few_labels", labels=100), torch.float64)


def method_with(name: str, data, pretrained=None, **settings):
    torch.manual_seed(0)
    model = build_model("mlp", data.in_shape, data.num_classes, hidden=[32]).to(data.train_x)
    ctx = Context(Student(model, SCHEDULE, 100), data, SCHEDULE, generator("m", 0))
    ctx.pretrained.update(pretrained or {})
    cls = METHODS[name]
    return cls(cls.Settings(**settings), ctx)


def pretrained_teacher(data):
    torch.manual_seed(1)
    model = build_model("mlp", data.in_shape, data.num_classes, hidden=[16]).to(data.train_x)
    return model.requires_grad_(False).eval()


def fixed_labelled_batch(method, data, n: int = 40):
    method.val_index = lambda size=None: torch.arange(n)
    return data.val_x[:n], data.val_y[:n]


def test_augmentations_are_seeded_and_keep_shape(few64):
    x = few64.train_x[:16]
    assert augment(x, "none", torch.Generator()) is x
    for kind in ("crop_flip", "randaugment"):
        a = augment(x, kind, torch.Generator().manual_seed(3))
        b = augment(x, kind, torch.Generator().manual_seed(3))
        c = augment(x, kind, torch.Generator().manual_seed(4))
        assert a.shape == x.shape and a.dtype == x.dtype
        assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    with pytest.raises(ValueError, match="images"):
        augment(x.flatten(1), "randaugment", torch.Generator())


def test_cutout_fills_one_square_per_image(few64):
    x = few64.train_x[:8]
    fill = torch.full((8, 1, 1, 1), -9.0, dtype=x.dtype)
    out = cutout(x, fill, torch.Generator().manual_seed(0))
    holes = out == -9.0
    assert holes.any((1, 2, 3)).all()  # every image has a hole, at most 3 x 3 on 8 x 8 images
    assert (holes.sum((1, 2, 3)) <= 9).all()
    assert torch.equal(out[~holes], x[~holes])


def test_randaugment_without_operations_only_cuts_out(few64):
    x = few64.train_x[:8]
    out = augment(x, "randaugment", torch.Generator().manual_seed(0), ops=0)
    changed = out != x
    assert changed.any() and (changed.sum((1, 2, 3)) <= 9).all()


def test_pseudo_label_loss_is_its_definition(few64):
    method = method_with("pseudo_label", few64, threshold=0.15, rampup=0.5)
    vx, vy = fixed_labelled_batch(method, few64)
    batch = batch_of(few64, 0)
    model = method.student.model
    method.student.step_count = 25  # half of the ramp (0.5 of 100 steps)
    logits = model(torch.cat([vx, batch.x]))
    p = F.softmax(logits[40:], 1)
    mask = (p.max(1).values >= 0.15).double()
    assert 0 < mask.sum() < 32  # the threshold bites
    own = F.cross_entropy(logits[40:], p.argmax(1), reduction="none")
    expected = F.cross_entropy(logits[:40], vy) + 0.5 * (mask * own).mean()
    logged = method.step(batch)
    assert torch.allclose(logged["loss"], expected.detach(), rtol=1e-12)


def test_uda_consistency_is_masked_sharpened_cross_entropy():
    torch.manual_seed(0)
    weak, strong = torch.randn(6, 3, dtype=torch.float64) * 3, torch.randn(6, 3).double()
    target = F.softmax(weak / 0.5, 1)
    mask = F.softmax(weak, 1).max(1).values >= 0.7
    assert 0 < mask.sum() < 6
    expected = (mask * -(target * F.log_softmax(strong, 1)).sum(1)).mean()
    assert torch.allclose(uda_consistency(weak, strong, 0.5, 0.7), expected, rtol=1e-12)
    assert uda_consistency(weak, strong, 0.5, 1.01) == 0


def test_uda_loss_adds_consistency_on_a_strong_view(few64):
    method = method_with("uda", few64, threshold=0.15)
    vx, vy = fixed_labelled_batch(method, few64)
    batch = batch_of(few64, 0)
    g = torch.Generator()
    g.set_state(method.ctx.generator.get_state())
    strong = augment(batch.x, "randaugment", g)  # the step's first draw
    logits = method.student.model(torch.cat([vx, batch.x, strong]))
    consistency = uda_consistency(logits[40:72], logits[72:], 0.4, 0.15)
    expected = F.cross_entropy(logits[:40], vy) + consistency
    logged = method.step(batch)
    assert consistency > 0
    assert torch.allclose(logged["consistency"], consistency.detach(), rtol=1e-12)
    assert torch.allclose(logged["loss"], expected.detach(), rtol=1e-12)


def test_gradient_cosine_is_the_cosine_of_the_two_gradients(few64):
    method = method_with("pseudo_label", few64)
    model = method.student.model
    x = batch_of(few64, 0).x
    loss = -F.log_softmax(model(x), 1)[:, 0].mean()
    params = list(model.parameters())
    got = method.gradient_cosine(torch.autograd.grad(loss, params), few64.val_x, few64.val_y)
    a = torch.autograd.grad(-F.log_softmax(model(x), 1)[:, 0].mean(), params)
    b = torch.autograd.grad(F.cross_entropy(model(few64.val_x), few64.val_y), params)
    flat = [torch.cat([g.reshape(-1) for g in grads]) for grads in (a, b)]
    assert torch.allclose(got, F.cosine_similarity(*flat, dim=0), rtol=1e-10)


def test_noisy_student_learns_the_fixed_teacher_distributions(few64):
    teacher = pretrained_teacher(few64)
    method = method_with("noisy_student", few64, {"big": teacher}, teacher="big", augment="none")
    batch = batch_of(few64, 0)
    q = teacher(batch.x).softmax(1)
    expected = -(q * F.log_softmax(method.student.model(batch.x), 1)).sum(1).mean()
    assert torch.allclose(method.step(batch)["loss"], expected.detach(), rtol=1e-12)
    hard = method_with(
        "noisy_student", few64, {"big": teacher}, teacher="big", pseudo_labels="hard"
    )
    assert torch.equal(hard.large.argmax(1), distributions(teacher, few64.train_x).argmax(1))
    assert torch.equal(hard.large.sum(1), torch.ones(len(few64.train_y), dtype=torch.float64))


def test_reduced_mpl_starts_at_the_pretrained_teacher(few64):
    teacher = pretrained_teacher(few64)
    method = method_with("reduced_mpl", few64, {"big": teacher}, teacher="big")
    index = torch.arange(10)
    p = distributions(teacher, few64.train_x[:10])
    q = F.softmax(method.teacher(method.teacher_input(None, index, "train")), 1)
    assert torch.allclose(q, p, rtol=1e-6)


def test_reduced_mpl_teacher_gradient_is_double_backward(few64):
    teacher = pretrained_teacher(few64)
    method = method_with("reduced_mpl", few64, {"big": teacher}, teacher="big", teacher_lr=0.01)
    vx, vy = fixed_labelled_batch(method, few64)
    method.step(batch_of(few64, 0))  # a moved calibrator and momentum: every path active
    grads: list = []
    method.optimizer.step = lambda: grads.append(
        [p.grad.clone() for p in method.teacher.parameters()]
    )
    batch = batch_of(few64, 32)
    model, student, calibrator = method.student.model, method.student, method.teacher
    rule, momentum = student.rule(), dict(student.optimizer_state())

    inputs = torch.cat([method.large["train"][batch.index], method.large["val"][:40]])
    t_logits = calibrator(inputs)
    q = F.softmax(t_logits[:32], 1)
    params = params_of(model)
    loss = -(q * F.log_softmax(model(batch.x), 1)).sum(1).mean()
    g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    r_after = lookahead_loss(model, rule, momentum, dict(zip(params, g, strict=True)), vx, vy)
    supervised = F.cross_entropy(t_logits[32:], vy)
    expected = torch.autograd.grad(
        r_after + supervised, list(calibrator.parameters()), retain_graph=True
    )
    alone = torch.autograd.grad(supervised, list(calibrator.parameters()))

    method.step(batch)
    for a, b, c in zip(grads[0], expected, alone, strict=True):
        assert (a - b).abs().max() <= 1e-10 * b.abs().max()
        assert (a - c).abs().max() > 1e-3 * c.abs().max()  # the meta term is really there


def test_methods_that_need_a_teacher_say_so():
    for name in ("reduced_mpl", "noisy_student"):
        with pytest.raises(ParamsError, match=f"methods.{name}.teacher: required"):
            build(METHODS[name].Settings, {}, f"methods.{name}")
    with pytest.raises(ParamsError, match="uda_weight"):
        build(METHODS["mpl"].Settings, {"uda_weight": 1.0}, "methods.mpl")
