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


DEMO = {"bias": True, "metric": "sharp_01", "metric_sharpness": 5.0}  # the authors' demo


@pytest.mark.parametrize(
    ("segment", "warm_start", "options"),
    [
        (None, 0, {}),
        (1, 0, {}),
        (2, 3, {}),
        (5, 2, {}),
        (None, 0, {"bias": True}),
        (2, 3, {"bias": True}),
        (1, 0, {"metric": "sharp_01"}),
        (2, 0, DEMO),
        (None, 2, DEMO),
    ],
)
def test_teacher_gradient_equals_autograd_through_training(
    clean64, monkeypatch, segment, warm_start, options
):
    """Checkpointed reverse mode at several segment lengths, from a fresh or warm-started
    student (the oracle starts from the warm start's parameters and momentum); with the demo's
    learned per-class bias inside the sigmoid (its gradient too) and its sharp smoothed 0-1
    error as the dev measure (K = 50 as in the demo, and 5, where no sigmoid saturates)."""
    settings = {
        "teacher_steps": 1,
        "episode_steps": 5 + warm_start,
        "state_every": 2,
        "segment": segment,
        "warm_start": warm_start,
        **options,
    }
    method = make_method("dlf", clean64, arch="mlp", dtype=torch.float64, **settings)
    torch.manual_seed(5)
    for p in method.teacher.parameters():  # away from the identity start: every path active
        p.data.add_(torch.randn_like(p) * 0.3)
    names = dict(method.teacher.named_parameters())
    assert ("bias" in names) == options.get("bias", False)
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
        phi, b = method.teacher(state), method.teacher.bias
        z = (phi[y] * F.log_softmax(logits, 1)).sum(1)
        loss = -torch.sigmoid(z if b is None else z + b[y]).mean()
        loss = loss + 0.5 * schedule.weight_decay * sum((p * p).sum() for p in theta.values())
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        theta, v = sgd_step(theta, dict(zip(theta, grads, strict=True)), v, rule)
    val = functional_call(model, theta, (clean64.val_x,)).softmax(1)
    p_y = val.gather(1, clean64.val_y[:, None]).squeeze(1)
    if options.get("metric") == "sharp_01":  # one minus mean(2 sigmoid(K (max p - p_y)) - 1)
        k = options.get("metric_sharpness", 50.0)
        measure = 1 - (2 * torch.sigmoid(k * (val.max(1).values - p_y)) - 1).mean()
        assert method.history[0]["dev_measure"] == pytest.approx(float(measure.detach()), abs=1e-6)
    else:
        measure = p_y.mean()
        assert "dev_measure" not in method.history[0]
    expected = torch.autograd.grad(1 - measure, list(method.teacher.parameters()))
    for a, b in zip(applied[0], expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-13)
        assert float(a.abs().max()) > 0  # every parameter, the bias included, is reached
    assert method.history[0]["dev_expected_accuracy"] == pytest.approx(
        float(p_y.mean().detach()), abs=1e-6
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


@pytest.mark.parametrize("start_from", ["", "ce"])
def test_episodes_start_from_the_pretrained_checkpoint_with_start_from(
    clean64, monkeypatch, start_from
):
    """With start_from (the demo's protocol) every episode's student starts from the weights
    the run's student was given (the checkpoint train.py loads); without it, each starts from
    a fresh initialisation of its own."""
    method = make_method(
        "dlf", clean64, arch="mlp", dtype=torch.float64, teacher_steps=2, episode_steps=3,
        start_from=start_from,
    )  # fmt: skip
    checkpoint = {k: p.detach().clone() for k, p in method.student.model.named_parameters()}
    firsts = []

    class RecordingStudent(Student):
        def update(self, loss):
            if self.step_count == 0:
                firsts.append({k: p.detach().clone() for k, p in self.model.named_parameters()})
            super().update(loss)

    monkeypatch.setattr(dlf_module, "Student", RecordingStudent)
    method.optimise_teacher()
    assert len(firsts) == 2
    for first in firsts:
        same = all(torch.equal(first[k], checkpoint[k]) for k in checkpoint)
        assert same == bool(start_from)
    if not start_from:  # two fresh initialisations
        assert not all(torch.equal(firsts[0][k], firsts[1][k]) for k in checkpoint)


def test_held_end_of_sentence_keeps_coefficient_one_and_bias_zero():
    """hold_eos: whatever the teacher outputs, `</s>` is trained by -sigmoid(log p(</s>))."""
    from pipeline.data.translation_sources import EOS, PAD

    family = dlf_module.TranslationLoss.__new__(dlf_module.TranslationLoss)
    family.hold_eos = True
    phi, bias = torch.full((7,), 3.0, dtype=torch.float64), torch.full((7,), -2.0).double()
    held_phi, held_bias = family.held(phi, bias)
    assert float(held_phi[EOS]) == 1.0 and float(held_bias[EOS]) == 0.0
    assert torch.equal(held_phi[4:], phi[4:]) and torch.equal(held_bias[4:], bias[4:])
    logits = torch.randn(1, 3, 7, dtype=torch.float64)
    y = torch.tensor([[EOS, 5, PAD]])
    log_p = logits.log_softmax(-1)
    expected = -torch.sigmoid(log_p[0, 0, EOS]) - torch.sigmoid(3.0 * log_p[0, 1, 5] - 2.0)
    got = dlf_module.token_dynamic_loss(logits, y, held_phi, held_bias)
    assert torch.allclose(got, expected[None])


def test_sharp_01_error_is_zero_when_right_and_near_one_when_wrong():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    per = [float(dlf_module.sharp_01_error(logits[i : i + 1], y[i : i + 1], 50.0)) for i in (0, 1)]
    assert per[0] == 0.0 and per[1] > 0.99
    assert float(dlf_module.sharp_01_error(logits, y, 50.0)) == pytest.approx(sum(per) / 2)
