"""The student being trained: a model, its optimiser's update and its learning-rate schedule.

The update is the rule of torch.optim.SGD, Adam or AdamW as one pure function
(pipeline/core/optim.py, tested bit-identical to torch.optim), so look-ahead steps take
exactly the real step. Applying
it here rather than through torch.optim also spares each job the seconds torch.optim spends
importing its compiler on first use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ScheduleSpec
from pipeline.core.optim import AdamRule, Rule, SGDRule, State


class NonFinite(FloatingPointError):
    """Training produced a NaN or an infinity (the message names the step and the tensor)."""


def first_bad(quantity: str, tensors: dict[str, torch.Tensor], step: int) -> None:
    """Raise NonFinite naming the first tensor with a NaN or an infinity. A NaN or an
    infinity makes its tensor's sum one too, so finite sums clear every tensor at once (0.5
    ms a check for the translation Transformer's 105 tensors against 4.5 ms element-wise); a
    sum that is not finite, or that overflowed, sends them to the element-wise test."""
    if not tensors:
        return
    sums = torch.stack([t.sum() for t in tensors.values()])
    if bool(torch.isfinite(sums).all()):
        return
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise NonFinite(f"step {step}: the {quantity} of {name} is not finite")


def scheduled_lr(
    lr: float,
    step: int,
    total: int,
    *,
    warmup: int = 0,
    decay: str = "step",
    milestones: tuple[float, ...] = (),
    gamma: float = 0.1,
    wait: int = 0,
) -> float:
    """The learning rate of `step` (0-based) of `total`, shared by students and teachers.

    wait: the first `wait` steps have rate 0 and the rest runs the schedule as if training
    started there (warm-up, milestones and cosine over the `total - wait` steps left), as both
    public MPL codes shift their student's schedule by its wait. Then:
    warm-up: the first `warmup` steps rise linearly to lr (fairseq's warm-up from 0);
    step: lr * gamma^k after the k-th milestone (fractions of the steps);
    inverse_sqrt: fairseq's, lr * sqrt(warmup / (step + 1)) after the warm-up;
    cosine: after the warm-up, half a cosine from lr to 0 over the remaining steps (the
        schedule of both MPL codes and of the paper's Appendix B);
    constant: lr after the warm-up."""
    if step < wait:
        return 0.0
    step, total = step - wait, total - wait
    n = step + 1
    if decay == "inverse_sqrt":
        return lr * min(n / warmup, (warmup / n) ** 0.5)
    warm = min(1.0, n / warmup) if warmup else 1.0
    if decay == "cosine" and step >= warmup:
        progress = (step - warmup) / max(1, total - warmup)
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay in ("cosine", "constant"):
        return lr * warm
    passed = sum(step >= round(m * total) for m in milestones)
    return lr * gamma**passed * warm


class Student:
    def __init__(self, model: nn.Module, schedule: ScheduleSpec, total_steps: int):
        self.model = model
        self.schedule = schedule
        self.total_steps = total_steps
        self.step_count = 0
        self.state: State = {}  # the optimiser's (momentum or Adam's moments)
        # steps at rate 0 before the schedule starts (hold(), not update(); MPL's student wait)
        self.wait_steps = 0

    def lr_at(self, step: int) -> float:
        """The scheduled rate of `step` (0-based): `scheduled_lr` of the schedule, with this
        student's wait (a method's, e.g. MPL's student wait; 0 by default)."""
        s = self.schedule
        return scheduled_lr(
            s.lr,
            step,
            self.total_steps,
            warmup=s.warmup_steps,
            decay=s.lr_decay,
            milestones=s.milestones,
            gamma=s.gamma,
            wait=self.wait_steps,
        )

    @property
    def waiting(self) -> bool:
        """Whether the coming step falls in the wait (rate 0: the student does not step)."""
        return self.step_count < self.wait_steps

    def hold(self) -> None:
        """A step of the wait: counted, while parameters, buffers and optimiser state stay as
        they are (the rate is 0; no momentum builds up on the way, unlike a torch optimiser
        stepped at rate 0)."""
        if not self.waiting:
            raise RuntimeError(f"step {self.step_count + 1}: the student's wait is over")
        self.step_count += 1

    def rule(self) -> Rule:
        """The update rule of the coming step (its scheduled lr), for look-ahead steps."""
        s, lr = self.schedule, self.lr_at(self.step_count)
        if s.optimizer == "sgd":
            return SGDRule(lr, s.momentum, s.nesterov, s.weight_decay)
        beta1, beta2 = s.betas
        return AdamRule(lr, beta1, beta2, s.eps, s.weight_decay, s.optimizer == "adamw")

    def optimizer_state(self) -> State:
        """The optimiser's state (core/optim.py's layout; empty before the first step)."""
        return self.state

    def update(self, loss: torch.Tensor) -> None:
        """One step of the optimiser on `loss` at the scheduled learning rate. Every method's
        student steps here, so this is the one place that stops a run whose loss, gradients
        or new parameters are not finite (before any of them is applied)."""
        if self.waiting:
            raise RuntimeError(f"step {self.step_count + 1}: the student waits (hold, not update)")
        params = dict(self.model.named_parameters())
        for p in params.values():
            p.grad = None
        if not torch.isfinite(loss.detach()).all():
            raise NonFinite(
                f"step {self.step_count + 1}: the training loss is {float(loss.detach())}"
            )
        loss.backward()
        with torch.no_grad():
            grads = {k: p.grad for k, p in params.items() if p.grad is not None}
            first_bad("gradient", grads, self.step_count + 1)
            trained = {k: params[k] for k in grads}
            new, state = self.rule().step(trained, grads, self.state)
            first_bad("parameter", new, self.step_count + 1)
            for k, value in new.items():
                params[k].copy_(value)
            self.state = {**self.state, **state}
        self.step_count += 1

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": dict(self.state),
            "step_count": self.step_count,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.state = dict(state["optimizer"])
        self.step_count = state["step_count"]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits in eval mode (batch norm uses running statistics), in chunks."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of examples whose largest logit is their label."""
    return float((logits.argmax(1) == y).double().mean())


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross entropy (the loss every method weights, targets or reshapes)."""
    return F.cross_entropy(logits, y, reduction="none")
