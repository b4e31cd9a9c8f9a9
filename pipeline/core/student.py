"""The student being trained: a model, its momentum-SGD optimiser and its step-decay schedule.

The real update is torch.optim.SGD; methods that look ahead reproduce the same rule
functionally (pipeline/core/optim.py), tested to match it exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ScheduleSpec
from pipeline.core.optim import SGDRule, momentum_buffers


class Student:
    def __init__(self, model: nn.Module, schedule: ScheduleSpec, total_steps: int):
        self.model = model
        self.schedule = schedule
        self.total_steps = total_steps
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=schedule.lr,
            momentum=schedule.momentum,
            nesterov=schedule.nesterov,
            weight_decay=schedule.weight_decay,
        )
        self.step_count = 0
        self.names = {p: name for name, p in model.named_parameters()}

    def lr_at(self, step: int) -> float:
        """Step decay: lr * gamma^k after the k-th milestone (fractions of total steps)."""
        passed = sum(step >= round(m * self.total_steps) for m in self.schedule.milestones)
        return self.schedule.lr * self.schedule.gamma**passed

    def rule(self) -> SGDRule:
        """The update rule of the coming step (its scheduled lr), for look-ahead steps."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count)
        return SGDRule.of(self.optimizer)

    def momentum(self) -> dict[str, torch.Tensor]:
        """The optimiser's momentum buffers by parameter name."""
        return momentum_buffers(self.optimizer, self.names)

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step on `loss` at the scheduled learning rate."""
        self.rule()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step_count": self.step_count,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = state["step_count"]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits in eval mode (batch norm uses running statistics), in chunks."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x).argmax(1) == y).double().mean())


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross entropy (the loss every method weights, targets or reshapes)."""
    return F.cross_entropy(logits, y, reduction="none")
