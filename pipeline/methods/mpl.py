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
- `first_order` (hard pseudo labels y^ sampled from the teacher, as the paper and most
  reimplementations train): the teacher loss h * CE(T(x_u), y^) with the scalar
  h = R(theta) - R(theta'), the change of the student's labelled loss over its step, a
  first-order estimate of the paper's Appendix A score-function gradient (h > 0: the labels
  helped, so the teacher makes them likelier). It needs one labelled forward before and one
  after the student's step and no derivative through the student; it is an estimate, while
  `exact` is the true gradient of R(theta') for soft labels.
The teacher's optimiser is SGD with (Nesterov) momentum, as the student's (Appendix B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.func import functional_call

from pipeline.core.meta import (
    buffer_copies,
    lookahead_direction,
    params_of,
    tangent_only,
    targets_loss,
    teacher_surrogate,
)
from pipeline.methods.base import Batch, Method, MethodSettings
from pipeline.models import fresh_copy


class MetaPseudoLabels(Method):
    uses_unlabelled = True  # the student sees only the teacher's labels

    @dataclass(frozen=True)
    class Settings(MethodSettings):
        route: Literal["exact", "first_order"] = "exact"
        pseudo_labels: Literal["soft", "hard"] = "soft"
        temperature: float = 1.0
        teacher_lr: float = 0.05
        teacher_momentum: float = 0.9
        nesterov: bool = True
        supervised_weight: float = 1.0  # the teacher's own cross entropy on labelled data
        val_batch_size: int | None = None

        def check(self, where: str) -> None:
            from pipeline.config import ParamsError

            pairs = {"exact": "soft", "first_order": "hard"}
            if pairs[self.route] != self.pseudo_labels:
                raise ParamsError(
                    f"{where}.pseudo_labels: route {self.route} is defined for "
                    f"{pairs[self.route]} pseudo labels (exact differentiates soft targets; "
                    "sampled hard labels have no derivative, hence first_order)"
                )
            if self.temperature <= 0:
                raise ParamsError(f"{where}.temperature: must be > 0")

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        seed = int(torch.randint(2**31, (1,), generator=ctx.generator))
        self.teacher = fresh_copy(ctx.student.model, seed)
        self.optimizer = torch.optim.SGD(
            self.teacher.parameters(),
            lr=settings.teacher_lr,
            momentum=settings.teacher_momentum,
            nesterov=settings.nesterov,
        )

    def pseudo_labels(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Target distributions: the teacher's softmax, or one-hot samples from it."""
        q = F.softmax(teacher_logits / self.settings.temperature, 1)
        if self.settings.pseudo_labels == "soft":
            return q
        drawn = torch.multinomial(q.detach().cpu(), 1, generator=self.ctx.generator)
        return F.one_hot(drawn.squeeze(1), q.shape[1]).to(q).to(q.device)

    def labelled_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The student's labelled loss at its current parameters (buffer copies, no graph)."""
        model = self.student.model
        with torch.no_grad():
            out = functional_call(model, (params_of(model), buffer_copies(model)), (x,))
            return F.cross_entropy(out, y)

    def step(self, batch: Batch):
        s, student = self.settings, self.student
        model, x_u = student.model, batch.x
        vx, vy = self.val_batch(s.val_batch_size)
        teacher_logits = self.teacher(torch.cat([x_u, vx]))  # one forward: one BN update
        t_u, t_l = teacher_logits[: len(x_u)], teacher_logits[len(x_u) :]
        q = self.pseudo_labels(t_u)

        logits = model(x_u)
        loss = targets_loss(logits, q.detach()).sum()
        if s.route == "exact":
            params = params_of(model)
            grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
            direction, r_after = lookahead_direction(
                model,
                student.rule(),
                student.momentum(),
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

        supervised = F.cross_entropy(t_l, vy)
        self.optimizer.zero_grad(set_to_none=True)
        (meta + s.supervised_weight * supervised).backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "val_loss": r_after.detach(), "teacher_ce": supervised}

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
