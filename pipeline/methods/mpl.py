"""Meta Pseudo Labels (Pham et al. 2021, section 3.2), through the shared core.

The teacher, a network of the student's architecture, gives target distributions on the
unlabelled training batch; the student learns only from them. After the student's step
theta' = step(theta, grad CE(q(omega), S(x_u))) the teacher descends the student's loss on a
labelled batch R(theta') plus its own supervised cross entropy on that batch. In the
few-label splits (`few_labels` noise kind) the labelled examples are the validation split.

Two teacher gradients (`route`):
- `exact` (soft pseudo labels q = softmax(T(x_u) / temperature)): dR(theta')/domega, through
  the core's one-step JVP route (pipeline/core/meta.py): d = A^T grad R(theta'), the tangents
  of the student's logits along d, and the teacher surrogate for target distributions.
  tests/test_mpl.py checks it against double backward through the student's step.
- `first_order` (hard pseudo labels y^: the teacher's argmax, or `sampled` from it): the
  teacher loss h * CE(T(x_u), y^) with the scalar
  h = R(theta) - R(theta'), the change of the student's labelled loss over its step, a
  first-order estimate of the paper's Appendix A score-function gradient (h > 0: the labels
  helped, so the teacher makes them likelier). It needs one labelled forward before and one
  after the student's step and no derivative through the student; it is an estimate, while
  `exact` is the true gradient of R(theta') for soft labels.
The teacher's optimiser is SGD with (Nesterov) momentum, as the student's (Appendix B), or
Adam. Dropout on both networks: the student's rate is its model spec's `dropout`; the teacher,
a fresh copy of the student's architecture, has the same rate or `teacher_dropout`.

Protocol settings of the authors' public codes, where the paper is silent (both the official
TensorFlow code and the PyTorch reimplementation it links to): `student_wait_steps`, the
student's rate is 0 for the first steps and it does not step (here not even its momentum
builds up) while the teacher learns from its own labelled loss (and UDA's), the MPL term
being 0 while the student stands still; `teacher_warmup_steps` / `teacher_lr_decay` and the
schedule's `lr_decay: cosine`, a linear warm-up then half a cosine for both networks (the
student's counted from the end of its wait); `unlabelled_ratio`, unlabelled examples per
labelled one in a step (the codes: 7); and `pseudo_labels: hard`, the teacher's argmax, which
the codes' first-order teacher learns from (`sampled` draws from its distribution instead).
`validation_metrics` logs the teacher's validation accuracy, and the evaluate stage scores
the teacher on the test split beside the student (`scores_teacher`).

Pairings of Table 1: `augment: randaugment` feeds teacher and student the same strong
augmentation of the unlabelled batch, and the teacher's supervised batch too (RandAugment +
MPL); `uda_weight` > 0 adds UDA's consistency loss (the unaugmented batch as the weak view) to
the teacher's objective (UDA + MPL). `gradient_cosine` logs the cosine of the student's
training and validation gradients (Figure 8). ReducedMPL (reduced_mpl.py) reuses this class
with another teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from pipeline.augment import augment
from pipeline.core.meta import (
    buffer_copies,
    lookahead_direction,
    params_of,
    tangent_only,
    targets_loss,
    teacher_surrogate,
)
from pipeline.core.student import accuracy, predict, scheduled_lr
from pipeline.methods.base import Batch, Method
from pipeline.methods.semi_supervised import uda_consistency
from pipeline.methods.settings import MPLSettings
from pipeline.models import fresh_copy


class MetaPseudoLabels(Method):
    uses_unlabelled = True  # the student sees only the teacher's labels
    scores_teacher = True  # the teacher is a classifier of the student's architecture

    Settings = MPLSettings

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        self.teacher = self.make_teacher()
        s = settings
        if s.student_wait_steps >= self.student.total_steps:
            raise ValueError(
                f"student_wait_steps {s.student_wait_steps}: the run has "
                f"{self.student.total_steps} steps; the student would never learn"
            )
        self.student.wait_steps = s.student_wait_steps
        self.labelled_batch = s.labelled_batch_size(ctx.schedule.batch_size)
        if s.teacher_optimizer == "adam":
            self.optimizer = torch.optim.Adam(
                self.teacher.parameters(), lr=s.teacher_lr, weight_decay=s.teacher_weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                self.teacher.parameters(),
                lr=s.teacher_lr,
                momentum=s.teacher_momentum,
                nesterov=s.nesterov,
                weight_decay=s.teacher_weight_decay,
            )

    def make_teacher(self) -> torch.nn.Module:
        """A freshly initialised network of the student's architecture."""
        seed = int(torch.randint(2**31, (1,), generator=self.ctx.generator))
        teacher = fresh_copy(self.student.model, seed)
        if self.settings.teacher_dropout is not None:
            for module in teacher.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = self.settings.teacher_dropout
        return teacher

    def teacher_input(self, x: torch.Tensor, index: torch.Tensor, split: str) -> torch.Tensor:
        """What the teacher reads for these examples of `split` (train or val)."""
        return x

    def pseudo_labels(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Target distributions: the teacher's softmax (soft), one-hot at its argmax (hard,
        as both public codes label), or one-hot samples from it (sampled)."""
        q = F.softmax(teacher_logits / self.settings.temperature, 1)
        kind = self.settings.pseudo_labels
        if kind == "soft":
            return q
        if kind == "hard":
            return F.one_hot(teacher_logits.detach().argmax(1), q.shape[1]).to(q)
        drawn = torch.multinomial(q.detach().cpu(), 1, generator=self.ctx.generator)
        return F.one_hot(drawn.squeeze(1), q.shape[1]).to(q).to(q.device)

    def teacher_lr(self, step: int) -> float:
        """The teacher's rate at `step` (0-based): its warm-up, then constant or a cosine over
        the run (the teacher does not wait)."""
        s = self.settings
        return scheduled_lr(
            s.teacher_lr,
            step,
            self.student.total_steps,
            warmup=s.teacher_warmup_steps,
            decay=s.teacher_lr_decay,
        )

    def labelled_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The student's labelled loss at its current parameters (buffer copies, no graph)."""
        model = self.student.model
        with torch.no_grad():
            out = functional_call(model, (params_of(model), buffer_copies(model)), (x,))
            return F.cross_entropy(out, y)

    def teacher_logits(self, batch: Batch, x_u: torch.Tensor, vx, v_index) -> list:
        """The teacher's logits on the student's unlabelled batch, the labelled batch and (for
        UDA) the unaugmented unlabelled batch, in one forward (one batch-norm update)."""
        s, g = self.settings, self.ctx.generator
        parts = [
            self.teacher_input(x_u, batch.index, "train"),
            self.teacher_input(augment(vx, s.augment, g), v_index, "val"),
        ]
        if s.uda_weight > 0:
            parts.append(self.teacher_input(batch.x, batch.index, "train"))
        logits = self.teacher(torch.cat(parts))
        return list(logits.split([len(t) for t in parts]))

    def step(self, batch: Batch):
        s, student = self.settings, self.student
        x_u = augment(batch.x, s.augment, self.ctx.generator)
        v_index = self.val_index(self.labelled_batch)
        vx, vy = self.ctx.data.val_x[v_index], self.ctx.data.val_y[v_index]
        t_u, t_l, *t_weak = self.teacher_logits(batch, x_u, vx, v_index)
        q = self.pseudo_labels(t_u)

        if student.waiting:
            meta, logged, r_after = self.wait(x_u, q, vx, vy)
        else:
            meta, logged, r_after = self.student_step(x_u, q, t_u, vx, vy)

        supervised = F.cross_entropy(t_l, vy)
        teacher_loss = meta + s.supervised_weight * supervised
        if t_weak:
            uda = uda_consistency(t_weak[0], t_u, s.uda_temperature, s.uda_threshold)
            teacher_loss = teacher_loss + s.uda_weight * uda
            logged["teacher_uda"] = uda.detach()
        self.optimizer.zero_grad(set_to_none=True)
        teacher_loss.backward()
        for group in self.optimizer.param_groups:  # the step about to be taken (0-based)
            group["lr"] = self.teacher_lr(student.step_count - 1)
        self.step_teacher()
        return {**logged, "val_loss": r_after.detach(), "teacher_ce": supervised.detach()}

    def student_step(self, x_u, q, t_u, vx, vy):
        """The student's step on the pseudo labels q and the teacher's MPL term (`route`);
        returns the term, what to log and the student's labelled loss after its step."""
        s, student = self.settings, self.student
        model = student.model
        logits = model(x_u)
        loss = targets_loss(logits, q.detach()).sum()
        logged = {"loss": loss.detach()}
        params = params_of(model)
        if s.route == "exact" or s.gradient_cosine:  # one gradient serves both
            grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
        if s.gradient_cosine:
            logged["grad_cosine"] = self.gradient_cosine(grads, vx, vy)
        if s.route == "exact":
            direction, r_after = lookahead_direction(
                model,
                student.rule(),
                student.optimizer_state(),
                dict(zip(params, grads, strict=True)),
                vx,
                vy,
            )
            _, tangents = tangent_only(model, x_u, direction)
            meta = teacher_surrogate(targets_loss, logits, tangents, q)
            student.update(loss)
        else:
            r_before = self.labelled_loss(vx, vy)
            student.update(loss)
            r_after = self.labelled_loss(vx, vy)
            meta = (r_before - r_after) * -(q * F.log_softmax(t_u, 1)).sum(1).mean()
        return meta, logged, r_after

    def wait(self, x_u, q, vx, vy):
        """A step of the student's wait: it does not move (Student.hold), so R(theta') =
        R(theta) and the MPL term is 0; the teacher learns from its own losses alone. The
        student's loss on the labels is logged as in its steps, on buffer copies (no batch-norm
        update)."""
        model = self.student.model
        params = params_of(model)
        out = functional_call(model, (params, buffer_copies(model)), (x_u,))
        loss = targets_loss(out, q.detach()).sum()
        logged = {"loss": loss.detach()}
        if self.settings.gradient_cosine:
            grads = torch.autograd.grad(loss, list(params.values()))
            logged["grad_cosine"] = self.gradient_cosine(grads, vx, vy)
        r_after = self.labelled_loss(vx, vy)
        self.student.hold()
        return torch.zeros((), dtype=q.dtype, device=q.device), logged, r_after

    def validation_metrics(self, student_logits: torch.Tensor, val_x, val_y) -> dict:
        """The teacher's own validation loss and accuracy beside the student's (eval mode), on
        the examples the student was validated on."""
        if not self.scores_teacher:
            return {}
        t = predict(self.teacher, val_x)
        return {
            "teacher_val_loss": round(float(F.cross_entropy(t, val_y)), 6),
            "teacher_val_acc": round(accuracy(t, val_y), 6),
        }

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
