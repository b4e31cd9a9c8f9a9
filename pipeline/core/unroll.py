"""Reverse-mode differentiation through momentum-SGD steps, run backwards (no stored copies).

A teacher omega shapes the student's training objective L_t(theta, omega) at every step t of
momentum SGD (the rule of torch.optim.SGD, Nesterov excluded):

    v_{t+1} = mu v_t + g_t,   g_t = grad_theta L_t(theta_t, omega) + wd theta_t,
    theta_{t+1} = theta_t - lr_t v_{t+1}.

Given the validation gradient dtheta = dR/dtheta_K after the last step, the adjoints run
backwards (Maclaurin et al. 2015; Algorithm 1 of the deep-interactions reweighting paper):

    vhat = dv - lr_t dtheta             (everything that reaches v_{t+1})
    dtheta += H_t vhat,  dv = mu vhat,  domega += d/domega <g_t, vhat>,

and the states are recovered exactly in real arithmetic from theta_K and v_K alone:
theta_t = theta_{t+1} + lr_t v_{t+1},  v_t = (v_{t+1} - g_t) / mu.  One forward-over-reverse
pass per step (torch.func.jvp of torch.func.grad) yields g_t, H_t vhat and <g_t, vhat>, whose
gradient to the teacher is an ordinary backward. Memory is O(|theta|) whatever the number of
steps: the caller keeps only what rebuilds each step's objective (batch indices, learning rate,
a few scalars, the random state for dropout).

Recovering v_t divides by mu each step, so float error grows like mu^-B; tests/test_core.py
measures the recovered states against stored copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import grad, jvp

from pipeline.core.optim import SGDRule, Tensors

Objective = Callable[[Tensors], torch.Tensor]


@dataclass
class Step:
    """One recorded step: its learning rate and its training objective as a function of the
    parameters (the teacher's parameters enter through the closure, requiring grad)."""

    lr: float
    objective: Objective


def regularised(objective: Objective, weight_decay: float) -> Objective:
    """The objective whose gradient is torch.optim.SGD's: the loss plus wd / 2 |theta|^2."""
    if not weight_decay:
        return objective
    return lambda theta: (
        objective(theta) + 0.5 * weight_decay * sum((p * p).sum() for p in theta.values())
    )


def gradient_and_hvp(
    objective: Objective, theta: Tensors, direction: Tensors
) -> tuple[Tensors, Tensors, torch.Tensor]:
    """(g, H direction, <g, direction>) at theta in one forward-over-reverse pass. The last is
    differentiable with respect to whatever the objective closes over (the teacher)."""

    def gradient(params):
        value = objective(params)
        return value, value

    (g, _), (hv, directional) = jvp(grad(gradient, has_aux=True), (theta,), (direction,))
    return g, hv, directional


def backward_through_steps(
    theta: Tensors,
    velocity: Tensors,
    steps: Sequence[Step],
    rule: SGDRule,
    val_grad: Tensors,
    teacher: Sequence[torch.Tensor],
    trace: list[tuple[Tensors, Tensors]] | None = None,
) -> list[torch.Tensor]:
    """d R(theta_K) / d teacher through the last len(steps) steps (oldest first in `steps`),
    starting from the final parameters, momentum buffers and validation gradient.

    `trace`, when given, receives the recovered (theta_t, v_t), newest first (for testing).
    """
    if rule.nesterov:
        raise ValueError("reverse-mode through Nesterov momentum is not implemented")
    if not rule.momentum:
        raise ValueError("running momentum SGD backwards needs momentum > 0")
    mu = rule.momentum
    theta = {k: p.detach().clone() for k, p in theta.items()}
    v = {k: velocity[k].detach().clone() for k in theta}
    dtheta = {k: g.detach().clone() for k, g in val_grad.items()}
    dv = {k: torch.zeros_like(p) for k, p in theta.items()}
    dteacher = [torch.zeros_like(p) for p in teacher]
    for step in reversed(steps):
        for k in theta:
            theta[k] = theta[k] + step.lr * v[k]
        vhat = {k: dv[k] - step.lr * dtheta[k] for k in theta}
        objective = regularised(step.objective, rule.weight_decay)
        g, hv, directional = gradient_and_hvp(objective, theta, vhat)
        for acc, d in zip(dteacher, torch.autograd.grad(directional, teacher), strict=True):
            acc.add_(d)
        for k in theta:
            v[k] = (v[k] - g[k].detach()) / mu
            dtheta[k] = dtheta[k] + hv[k].detach()
            dv[k] = mu * vhat[k]
        if trace is not None:
            trace.append(({k: p.clone() for k, p in theta.items()}, dict(v)))
    return dteacher
