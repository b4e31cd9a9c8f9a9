"""Differentiable momentum SGD: the rule of torch.optim.SGD as a pure function of tensors.

Look-ahead methods must take the *real* optimiser's step (momentum, Nesterov, weight decay),
not a plain SGD step (a pitfall of public implementations). tests/test_core.py checks that this
function and torch.optim.SGD produce the same parameters, step after step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensors = dict[str, torch.Tensor]


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
    buffers: Tensors,
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
