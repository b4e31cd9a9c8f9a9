"""Meta-Weight-Net (Shu et al. 2019), through the shared core's one-step JVP route.

The teacher is an MLP (1 -> hidden -> 1, ReLU, sigmoid) from an example's training loss to its
weight. Each step (Algorithm 1 of Shu et al.): the virtual step theta'(omega) with the real
optimiser's rule on the weighted loss sum_i w_i l_i; the teacher steps on the validation loss
R(theta'), whose gradient is the teacher surrogate over the per-example tangents along
d = A^T grad R(theta') (pipeline/core/meta.py); the student then steps with the updated weights.

How the teacher's outputs v_i become the weights w_i (`normalise`) is where the paper is silent
and the authors' scripts differ:
- normalise (the default): w_i = v_i / sum_j v_j in the virtual and the real step, the
  normaliser inside the meta-gradient, as the authors' original noisy-label script does (an
  all-zero batch keeps its zero weights, as there). Raising every v_i by a common factor then
  leaves the step unchanged, so the teacher learns only how weights differ between examples.
- otherwise w_i = v_i / n, as the authors' later script does. Then raising every weight lowers
  R(theta') as a longer step would, whatever the examples' labels; measured, the direction of
  the learned function then follows the teacher's random initialisation (`mwn_mean` in the
  suspects tables).

The virtual step uses the real optimiser's rule (momentum, weight decay); the authors' scripts
take a plain SGD step there. The teacher's optimiser is SGD with `teacher_momentum`,
`nesterov` and `teacher_weight_decay` at `teacher_lr`; the defaults are the noisy-label
script's (1e-3, 0.9, Nesterov, 5e-4). The earlier form (1/n, momentum 0.9, weight decay 1e-3,
no Nesterov) is params.yaml's `mwn_mean`.
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


def batch_normalised(v: torch.Tensor) -> torch.Tensor:
    """v / sum(v), differentiable through the sum; a batch whose weights are all zero (every
    sigmoid underflowed) keeps them, as the authors' script guards it, instead of 0 / 0."""
    total = v.sum()
    return v / (total + (total == 0).to(v.dtype))


def flatten(teacher: nn.Sequential) -> None:
    """Zero the last layer's weights: the function is then the constant sigmoid(b) and its
    direction is learned, not inherited from the random draw. The gradient still reaches it:
    d v_i / d W2 = sigmoid'(b) h(l_i) with h the first layer's random, non-constant ReLU
    features, so the first meta-gradient moves W2 along the batch's features (with normalise,
    along h(l_i) - mean_j h(l_j), the part that differs between examples); the first layer
    starts learning once W2 is non-zero. The bias keeps its draw."""
    with torch.no_grad():
        teacher[-2].weight.zero_()


class MetaWeightNet(Method):
    Settings = MWNSettings

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        param = ctx.student.model.classifier.weight
        self.teacher = nn.Sequential(
            nn.Linear(1, settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, 1), nn.Sigmoid()
        ).to(param.device, param.dtype)
        if settings.flat_start:
            flatten(self.teacher)
        self.optimizer = torch.optim.SGD(
            self.teacher.parameters(),
            lr=settings.teacher_lr,
            momentum=settings.teacher_momentum,
            nesterov=settings.nesterov,
            weight_decay=settings.teacher_weight_decay,
        )

    def raw_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """v_i: the teacher's output on each example's loss, in (0, 1)."""
        return self.teacher(losses.detach()[:, None]).squeeze(1)

    def scaled(self, v: torch.Tensor) -> torch.Tensor:
        """The weights of the batch's losses from the teacher's outputs (module docstring):
        v_i / sum_j v_j with `normalise`, else v_i / n."""
        return batch_normalised(v) if self.settings.normalise else v / len(v)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return self.scaled(self.raw_weights(losses))

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
            v = self.raw_weights(losses)
            w = self.scaled(v)
        self.note_weights(batch, w * len(w))  # 1 is uniform (the 1/n form: the output itself)
        loss = (w * losses).sum()
        if not torch.isfinite(loss):
            raise FloatingPointError("mwn: non-finite weighted loss")
        self.student.update(loss)
        return {"loss": loss.detach(), "val_loss": val_loss, "w_mean": v.mean()}

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
