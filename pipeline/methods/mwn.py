"""Meta-Weight-Net (Shu et al. 2019), through the shared core's one-step JVP route.

The teacher is an MLP (1 -> hidden -> 1, ReLU, sigmoid) from an example's training loss to its
weight. Each step (Algorithm 1 of Shu et al.): the virtual step theta'(omega) with the real
optimiser's rule on the weighted loss (1/n) sum_i w_i l_i; the teacher steps on the validation
loss R(theta'), whose gradient is the teacher surrogate over the per-example tangents along
d = A^T grad R(theta') (pipeline/core/meta.py); the student then steps with the updated weights.
The teacher's optimiser is SGD with momentum 0.9 and weight decay 1e-3, lr `teacher_lr`.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.core.meta import (
    lookahead_direction,
    params_of,
    tangent_only,
    teacher_surrogate,
    weights_loss,
)
from pipeline.core.student import cross_entropy
from pipeline.core.traced import forward_for_tangents_later
from pipeline.methods.base import Batch, Method
from pipeline.methods.settings import MWNSettings


class MetaWeightNet(Method):
    Settings = MWNSettings

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        param = ctx.student.model.classifier.weight
        self.teacher = nn.Sequential(
            nn.Linear(1, settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, 1), nn.Sigmoid()
        ).to(param.device, param.dtype)
        self.optimizer = torch.optim.SGD(
            self.teacher.parameters(), lr=settings.teacher_lr, momentum=0.9, weight_decay=1e-3
        )

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        """w_i / n: Shu et al. average the weighted losses over the batch."""
        return self.teacher(losses.detach()[:, None]).squeeze(1) / len(losses)

    def training_losses(self, batch: Batch):
        """The batch's per-example losses with their graph, and (route jvp_traced, a model
        that traces) the function giving their tangents along a direction later."""
        model = self.student.model
        later = None
        if self.settings.route == "jvp_traced":
            later = forward_for_tangents_later(model, batch.x)
        if later is None:
            return cross_entropy(model(batch.x), batch.y), None
        logits, tangent_of = later
        return cross_entropy(logits, batch.y), tangent_of

    def teacher_step(self, batch: Batch, losses: torch.Tensor, tangent_of=None) -> torch.Tensor:
        """One SGD step of the teacher on R(theta'(omega)); returns R(theta'). `tangent_of`:
        the recorded training forward's tangents (None: a separate tangent forward)."""
        model, student = self.student.model, self.student
        params = params_of(model)
        with torch.no_grad():
            w = self.weights(losses)
        grads = torch.autograd.grad((w * losses).sum(), list(params.values()), retain_graph=True)
        grads = dict(zip(params, grads, strict=True))
        vx, vy = self.val_batch(self.settings.val_batch_size)
        direction, val_loss = lookahead_direction(
            model, student.rule(), student.optimizer_state(), grads, vx, vy
        )
        per_example = lambda out: cross_entropy(out, batch.y)  # noqa: E731
        if tangent_of is None:
            _, tangents = tangent_only(model, batch.x, direction, per_example)
        else:
            tangents = tangent_of(direction, per_example)
        surrogate = teacher_surrogate(weights_loss, losses, tangents, self.weights(losses))
        self.optimizer.zero_grad(set_to_none=True)
        surrogate.backward()
        self.step_teacher()
        return val_loss

    def step(self, batch: Batch):
        losses, tangent_of = self.training_losses(batch)
        val_loss = self.teacher_step(batch, losses, tangent_of)
        with torch.no_grad():
            w = self.weights(losses)
        self.note_weights(batch, w * len(w))  # the teacher's output, in (0, 1)
        loss = (w * losses).sum()
        if not torch.isfinite(loss):
            raise FloatingPointError("mwn: non-finite weighted loss")
        self.student.update(loss)
        return {"loss": loss.detach(), "val_loss": val_loss, "w_mean": w.sum()}

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
