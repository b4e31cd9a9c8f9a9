"""L2T-DLF and its loss baselines on real tiny data: the teacher gradient of a teacher
optimisation step equals autograd through the whole unrolled student training (float64), and
the baseline losses are the ones defined in the papers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_methods import batch_of, digits_task, make_method
from torch.func import functional_call

import pipeline.methods.dlf as dlf_module
from pipeline.config import NoiseSpec
from pipeline.core.optim import SGDRule, sgd_step
from pipeline.core.student import Student
from pipeline.methods.loss_baselines import large_margin_logits


@pytest.fixture(scope="module")
def clean64():
    return digits_task(NoiseSpec(kind="none", val_size=100), torch.float64)


@pytest.mark.parametrize(("segment", "warm_start"), [(None, 0), (1, 0), (2, 3), (5, 2)])
def test_teacher_gradient_equals_autograd_through_training(
    clean64, monkeypatch, segment, warm_start
):
    """Checkpointed reverse mode at several segment lengths, from a fresh or warm-started
    student (the oracle starts from the warm start's parameters and momentum)."""
    settings = {
        "teacher_steps": 1,
        "episode_steps": 5 + warm_start,
        "state_every": 2,
        "segment": segment,
        "warm_start": warm_start,
    }
    method = make_method("dlf", clean64, arch="mlp", dtype=torch.float64, **settings)
    torch.manual_seed(5)
    for p in method.teacher.parameters():  # away from the identity start: every path active
        p.data.add_(torch.randn_like(p) * 0.3)
    start = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    seen: dict = {"steps": []}

    class RecordingStudent(Student):
        """Records the episode student's parameters and optimiser state before the
        teacher-set steps."""

        def update(self, loss):
            if self.step_count == warm_start:
                named = self.model.named_parameters()
                seen["theta0"] = {k: p.detach().clone() for k, p in named}
                seen["v0"] = dict(self.state)
                seen["student"] = self
            super().update(loss)

    monkeypatch.setattr(dlf_module, "Student", RecordingStudent)
    replay = method.replay
    monkeypatch.setattr(
        method,
        "replay",
        lambda m, index, s, rng: (
            seen["steps"].append((clean64.train_x[index], clean64.train_y[index], s))
            or replay(m, index, s, rng)
        ),
    )
    applied = []
    method.optimizer.step = lambda: applied.append(
        [p.grad.clone() for p in method.teacher.parameters()]
    )
    method.optimise_teacher()

    method.teacher.load_state_dict(start)
    model, schedule = method.student.model, method.ctx.schedule
    theta = {k: p.requires_grad_() for k, p in seen["theta0"].items()}
    v = seen["v0"]
    assert bool(v) == bool(warm_start)
    for t, (x, y, state) in enumerate(seen["steps"]):
        rule = SGDRule(seen["student"].lr_at(warm_start + t), schedule.momentum)
        logits = functional_call(model, theta, (x,))
        phi = method.teacher(state)
        loss = -torch.sigmoid((phi[y] * F.log_softmax(logits, 1)).sum(1)).mean()
        loss = loss + 0.5 * schedule.weight_decay * sum((p * p).sum() for p in theta.values())
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        theta, v = sgd_step(theta, dict(zip(theta, grads, strict=True)), v, rule)
    val = functional_call(model, theta, (clean64.val_x,)).softmax(1)
    measure = val.gather(1, clean64.val_y[:, None]).mean()
    expected = torch.autograd.grad(1 - measure, list(method.teacher.parameters()))
    for a, b in zip(applied[0], expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-13)
    assert method.history[0]["dev_expected_accuracy"] == pytest.approx(
        float(measure.detach()), abs=1e-6
    )


def test_state_has_three_plus_class_count_entries_in_unit_range(clean64):
    method = make_method("dlf", clean64, arch="mlp", dtype=torch.float64, teacher_steps=1)
    s = method.tracker.state(method.student.model, 7)
    assert s.shape == (3 + clean64.num_classes,)
    assert float(s[0]) == pytest.approx(7 / method.student.total_steps)
    assert bool(((s >= 0) & (s <= 1)).all())


def test_identity_coefficients_give_the_sigmoid_of_log_likelihood():
    logits = torch.randn(6, 10, dtype=torch.float64)
    y = torch.arange(6)
    got = dlf_module.dynamic_loss(logits, y, torch.eye(10, dtype=torch.float64))
    expected = -torch.sigmoid(F.log_softmax(logits, 1)[torch.arange(6), y])
    assert torch.allclose(got, expected)


def test_smooth_01_loss_definition(clean64):
    method = make_method("smooth_01", clean64, arch="mlp", dtype=torch.float64, sharpness=3.0)
    batch = batch_of(clean64, 0)
    log_p = F.log_softmax(method.student.model(batch.x), 1).detach()
    top = log_p[torch.arange(32), batch.y]
    others = log_p.clone()
    others[torch.arange(32), batch.y] = float("-inf")
    expected = -F.logsigmoid(3.0 * (top - others.max(1).values)).mean() / 3.0
    assert torch.allclose(method.step(batch)["loss"], expected)


def test_large_margin_softmax_logits():
    """m = 1 (or a huge beta) gives the plain logits; m = 2 lowers the target logit."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3).double()
    features, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    plain = layer(features)
    assert torch.allclose(large_margin_logits(features, layer, y, 1, 0.0), plain)
    assert torch.allclose(large_margin_logits(features, layer, y, 2, 1e12), plain)
    margin = large_margin_logits(features, layer, y, 2, 0.0)
    rows = torch.arange(8)
    assert bool((margin[rows, y] <= plain[rows, y] + 1e-12).all())
    off_target = torch.ones_like(plain, dtype=torch.bool)
    off_target[rows, y] = False
    assert torch.equal(margin[off_target], plain[off_target])
