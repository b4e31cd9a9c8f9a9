"""The student's optimisers as pure functions of tensors: momentum SGD, Adam and AdamW.

Look-ahead methods must take the *real* optimiser's step (momentum, Nesterov, weight decay,
Adam's moments), not a plain SGD step (a pitfall of public implementations). Each rule's
`step(params, grads, state)` returns (new params, new state) and is differentiable in all
three, so look-aheads (core/meta.py) and reverse mode (core/unroll.py) use any of them.
tests/test_core.py checks each against torch.optim, bit for bit, step after step.

The state is a flat dict: for SGD the momentum buffer by parameter name (absent before the
first step); for Adam "exp_avg/<name>", "exp_avg_sq/<name>" and "step" (an int).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

Tensors = dict[str, torch.Tensor]
State = dict[str, torch.Tensor | int]


class Rule(Protocol):
    lr: float

    def step(self, params: Tensors, grads: Tensors, state: State) -> tuple[Tensors, State]: ...


@dataclass(frozen=True)
class SGDRule:
    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    @classmethod
    def of(cls, optimizer: torch.optim.SGD) -> SGDRule:
        """The rule of a torch SGD optimiser with one parameter group, at its current lr."""
        (group,) = optimizer.param_groups
        if group["dampening"] != 0:
            raise ValueError("the functional SGD step supports dampening 0 only")
        return cls(group["lr"], group["momentum"], group["nesterov"], group["weight_decay"])

    def step(self, params: Tensors, grads: Tensors, state: State) -> tuple[Tensors, State]:
        return sgd_step(params, grads, state, self)


def momentum_buffers(optimizer: torch.optim.SGD, names: dict[torch.Tensor, str]) -> Tensors:
    """The optimiser's momentum buffers by parameter name (absent before the first step)."""
    out = {}
    for p, state in optimizer.state.items():
        if state.get("momentum_buffer") is not None:
            out[names[p]] = state["momentum_buffer"]
    return out


def sgd_step(
    params: Tensors,
    grads: Tensors,
    buffers: State,
    rule: SGDRule,
) -> tuple[Tensors, Tensors]:
    """One step of torch.optim.SGD (dampening 0), differentiable in params and grads.

    g = grad + wd * p;  b = mu * b + g (b = g on the first step);
    p' = p - lr * (g + mu * b if nesterov else b).  Returns (new params, new buffers).
    """
    new_params, new_buffers = {}, {}
    for name, p in params.items():
        g = grads[name]
        # torch.add(a, b, alpha=c) rounds like torch.optim's in-place ops: bit-identical steps.
        if rule.weight_decay:
            g = torch.add(g, p, alpha=rule.weight_decay)
        if rule.momentum:
            b = buffers.get(name)
            b = g if b is None else torch.add(b * rule.momentum, g)
            new_buffers[name] = b
            g = torch.add(g, b, alpha=rule.momentum) if rule.nesterov else b
        new_params[name] = torch.add(p, g, alpha=-rule.lr)
    return new_params, new_buffers


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with derivative 0 at 0 instead of inf: a parameter whose gradient has always been
    exactly 0 (a dead unit) has v = 0, and 0 * inf would make the meta-gradient NaN. The
    value is sqrt's, bit for bit (v >= 0), so a step that no derivative goes through takes
    sqrt itself (the two wheres took two fifths of a plain Adam step's time)."""
    if not (torch.is_grad_enabled() and v.requires_grad):
        return v.sqrt()
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, 1.0).sqrt(), 0.0)


@dataclass(frozen=True)
class AdamRule:
    """torch.optim.Adam (decoupled=False: L2 weight decay added to the gradient) or AdamW
    (decoupled=True: p *= 1 - lr * wd before the update), amsgrad and maximize off."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False

    @classmethod
    def of(cls, optimizer: torch.optim.Adam) -> AdamRule:
        (group,) = optimizer.param_groups
        if group["amsgrad"] or group["maximize"]:
            raise ValueError("the functional Adam step supports amsgrad and maximize off")
        beta1, beta2 = group["betas"]
        decoupled = isinstance(optimizer, torch.optim.AdamW) or group.get(
            "decoupled_weight_decay", False
        )
        return cls(group["lr"], beta1, beta2, group["eps"], group["weight_decay"], decoupled)

    def step(self, params: Tensors, grads: Tensors, state: State) -> tuple[Tensors, State]:
        """The operations of torch.optim.Adam's single-tensor loop, out of place, in order."""
        t = int(state.get("step", 0)) + 1
        correction1 = 1 - self.beta1**t
        step_size = self.lr / correction1
        correction2_sqrt = (1 - self.beta2**t) ** 0.5
        new_params, new_state = {}, {"step": t}
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay and self.decoupled:
                p = p * (1 - self.lr * self.weight_decay)
            elif self.weight_decay:
                g = torch.add(g, p, alpha=self.weight_decay)
            m = state.get(f"exp_avg/{name}", torch.zeros_like(p))
            v = state.get(f"exp_avg_sq/{name}", torch.zeros_like(p))
            m = torch.lerp(m, g, 1 - self.beta1)
            v = torch.addcmul(v * self.beta2, g, g, value=1 - self.beta2)
            denom = _sqrt(v) / correction2_sqrt + self.eps
            new_params[name] = torch.addcdiv(p, m, denom, value=-step_size)
            new_state[f"exp_avg/{name}"], new_state[f"exp_avg_sq/{name}"] = m, v
        return new_params, new_state


def adam_state(optimizer: torch.optim.Adam, names: dict[torch.Tensor, str]) -> State:
    """A torch Adam optimiser's state in the functional rule's layout (for tests)."""
    out: State = {}
    for p, s in optimizer.state.items():
        out["step"] = int(s["step"])
        out[f"exp_avg/{names[p]}"] = s["exp_avg"]
        out[f"exp_avg_sq/{names[p]}"] = s["exp_avg_sq"]
    return out
