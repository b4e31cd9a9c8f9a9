"""The student being trained: a model, its optimiser's update and its step-decay schedule.

The update is the rule of torch.optim.SGD, Adam or AdamW as one pure function
(pipeline/core/optim.py, tested bit-identical to torch.optim), so look-ahead steps take
exactly the real step. Applying
it here rather than through torch.optim also spares each job the seconds torch.optim spends
importing its compiler on first use.
"""

from __future__ import annotations

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


class Student:
    def __init__(self, model: nn.Module, schedule: ScheduleSpec, total_steps: int):
        self.model = model
        self.schedule = schedule
        self.total_steps = total_steps
        self.step_count = 0
        self.state: State = {}  # the optimiser's (momentum or Adam's moments)

    def lr_at(self, step: int) -> float:
        """Step decay: lr * gamma^k after the k-th milestone (fractions of total steps); or
        fairseq's inverse_sqrt: lr * sqrt(warmup / (step + 1)) after the warm-up. The first
        `warmup_steps` steps rise linearly to lr (fairseq's warm-up from 0)."""
        s, n = self.schedule, step + 1
        if s.lr_decay == "inverse_sqrt":
            return s.lr * min(n / s.warmup_steps, (s.warmup_steps / n) ** 0.5)
        passed = sum(step >= round(m * self.total_steps) for m in s.milestones)
        warm = min(1.0, n / s.warmup_steps) if s.warmup_steps else 1.0
        return s.lr * s.gamma**passed * warm

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
