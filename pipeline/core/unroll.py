"""Reverse-mode differentiation through a student's training steps, two routes.

`backward_by_segments` (any optimiser of core/optim.py, any horizon): the caller keeps the
parameters and optimiser state every k steps; each segment is recomputed forward from its
checkpoint with its graph and differentiated by autograd, newest segment first. Exact, with
O(T/k) checkpoints and one segment's graph (O(k)) in memory; k = sqrt(T) balances the two.

`backward_through_steps` (momentum SGD only, a few steps): runs the steps backwards and keeps
no copies at all (memory O(|theta|)); exact in real arithmetic only, see below.

A teacher omega shapes the student's training objective L_t(theta, omega) at every step t of
momentum SGD (the rule of torch.optim.SGD, Nesterov excluded):

    v_{t+1} = mu v_t + g_t,   g_t = grad_theta L_t(theta_t, omega) + wd theta_t,
    theta_{t+1} = theta_t - lr_t v_{t+1}.

Given the validation gradient dtheta = dR/dtheta_K after the last step, the adjoints run
backwards (Maclaurin et al. 2015; Algorithm 1 of the deep-interactions reweighting paper):

    vhat = dv - lr_t dtheta             (everything that reaches v_{t+1})
    dtheta += H_t vhat,  dv = mu vhat,  domega += d/domega <g_t, vhat>,

and the states are recovered exactly in real arithmetic from theta_K and v_K alone:
theta_t = theta_{t+1} + lr_t v_{t+1},  v_t = (v_{t+1} - g_t) / mu.  Per step, one forward and
a double backward give g_t, H_t vhat and d<g_t, vhat>/domega (`step_adjoint`). Memory is
O(|theta|) whatever the number of steps: the caller keeps only what rebuilds each step's
objective (its minibatch, learning rate, a few scalars, the random state for dropout).

Recovering v_t divides by mu each step, so float error grows like mu^-B: measured in float32
on an MLP at mu = 0.9, 4.5e-7 after 50 steps back, 1.5 after 200, 1e7 after 350 (a teacher
gradient of cosine -0.19 with the exact one). So the reversal refuses more than
REVERSAL_LIMIT steps; longer horizons take the segments route. tests/test_unroll.py measures
the recovered states against stored copies and both routes against autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from pipeline.core.optim import Rule, SGDRule, State, Tensors

Objective = Callable[[Tensors], torch.Tensor]

REVERSAL_LIMIT = 50  # steps momentum SGD may be run backwards in float arithmetic


def rng_state(device: torch.device) -> dict:
    """The random state before a forward, so that its dropout masks can be replayed."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = (device, torch.cuda.get_rng_state(device))
    return state


@contextmanager
def replayed_rng(state: dict):
    """Run a block from a recorded random state (a forward in it draws the recorded forward's
    dropout masks), leaving the current state alone."""
    device, cuda = state.get("cuda", (None, None))
    with torch.random.fork_rng(devices=[device] if device is not None else []):
        torch.set_rng_state(state["cpu"])
        if device is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


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


def step_adjoint(
    objective: Objective, theta: Tensors, direction: Tensors, teacher: Sequence[torch.Tensor]
) -> tuple[Tensors, Tensors, list[torch.Tensor | None]]:
    """(g, H direction, d<g, direction>/d teacher) at theta: the gradient g of the objective,
    then one backward of <g, direction> to the parameters and the teacher (double backward).
    On CPU this was 2.3-3.4x faster than forward-over-reverse (torch.func.jvp of grad) for an
    MLP (784-500-10, batch 20), with the same O(|theta|) memory; tests/test_unroll.py checks
    it against autograd through the unrolled steps."""
    params = {k: p.detach().requires_grad_() for k, p in theta.items()}
    with torch.enable_grad():
        value = objective(params)
        g = torch.autograd.grad(value, list(params.values()), create_graph=True)
        dot = sum((gi * direction[k]).sum() for gi, k in zip(g, params, strict=True))
        inputs = [*params.values(), *teacher]
        back = torch.autograd.grad(dot, inputs, allow_unused=True)
    hv = {
        k: torch.zeros_like(p) if h is None else h
        for (k, p), h in zip(params.items(), back[: len(params)], strict=True)
    }
    gradient = {k: gi.detach() for k, gi in zip(params, g, strict=True)}
    return gradient, hv, list(back[len(params) :])


def backward_through_steps(
    theta: Tensors,
    velocity: Tensors,
    steps: Sequence[Step],
    rule: SGDRule,
    val_grad: Tensors,
    teacher: Sequence[torch.Tensor],
    trace: list[tuple[Tensors, Tensors]] | None = None,
    stored: Sequence[Tensors] | None = None,
) -> list[torch.Tensor]:
    """d R(theta_K) / d teacher through the last len(steps) steps (oldest first in `steps`),
    starting from the final parameters, momentum buffers and validation gradient.

    `stored`: the parameters theta_t before each step, kept by the caller (O(K |theta|)
    memory; plain SGD, or a check); None recovers them by running momentum SGD backwards.
    `trace`, when given, receives the recovered (theta_t, v_t), newest first (for testing).
    """
    if rule.nesterov:
        raise ValueError("reverse-mode through Nesterov momentum is not implemented")
    if not rule.momentum and stored is None:
        raise ValueError("running SGD backwards needs momentum > 0 (or stored parameters)")
    if stored is None and len(steps) > REVERSAL_LIMIT:
        raise ValueError(
            f"running momentum SGD {len(steps)} steps backwards loses the states to rounding "
            f"(limit {REVERSAL_LIMIT}); use backward_by_segments"
        )
    mu = rule.momentum
    theta = {k: p.detach().clone() for k, p in theta.items()}
    v = {
        k: velocity[k].detach().clone() if k in velocity else torch.zeros_like(p)
        for k, p in theta.items()
    }
    dtheta = {k: g.detach().clone() for k, g in val_grad.items()}
    dv = {k: torch.zeros_like(p) for k, p in theta.items()}
    dteacher = [torch.zeros_like(p) for p in teacher]
    for t in reversed(range(len(steps))):
        step = steps[t]
        for k in theta:
            theta[k] = stored[t][k].detach() if stored else theta[k] + step.lr * v[k]
        vhat = {k: dv[k] - step.lr * dtheta[k] for k in theta}
        objective = regularised(step.objective, rule.weight_decay)
        g, hv, grads = step_adjoint(objective, theta, vhat, teacher)
        for acc, d in zip(dteacher, grads, strict=True):
            if d is not None:  # a teacher parameter this step did not use
                acc.add_(d)
        for k in theta:
            if not stored:
                v[k] = (v[k] - g[k].detach()) / mu
            dtheta[k] = dtheta[k] + hv[k].detach()
            dv[k] = mu * vhat[k]
        if trace is not None:
            trace.append(({k: p.clone() for k, p in theta.items()}, dict(v)))
    return dteacher


def segment_length(steps: int, every: int | None) -> int:
    """Steps between checkpoints: `every`, or ceil(sqrt(steps)) when None."""
    return every or max(1, -(-steps // max(1, int(steps**0.5))))


def backward_by_segments(
    checkpoints: Sequence[tuple[Tensors, State]],
    every: int,
    steps: Sequence[Step],
    rule: Rule,
    val_grad: Tensors,
    teacher: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """d R(theta_T) / d teacher through all T = len(steps) steps of `rule` (its lr replaced by
    each step's), from checkpoints[j] = (parameters, optimiser state) before step j * every
    and the validation gradient at theta_T. Each segment's steps are recomputed with their
    graph (the gradient of each objective with create_graph, then the rule's step) and one
    backward carries the adjoints of the parameters and of the optimiser state to the
    segment's start, collecting the teacher's gradient on the way."""
    if len(checkpoints) != -(-len(steps) // every):
        raise ValueError(f"{len(steps)} steps need a checkpoint every {every} steps")
    dtheta = {k: g.detach() for k, g in val_grad.items()}
    dstate: Tensors = {}  # the validation loss does not read the optimiser state
    dteacher = [torch.zeros_like(p) for p in teacher]
    for j in reversed(range(len(checkpoints))):
        theta0, state0 = checkpoints[j]
        theta = {k: p.detach().requires_grad_() for k, p in theta0.items()}
        leaves = {
            k: v.detach().requires_grad_()
            for k, v in state0.items()
            if torch.is_tensor(v) and v.is_floating_point()
        }
        params, state = theta, {**state0, **leaves}
        with torch.enable_grad():
            for step in steps[j * every : (j + 1) * every]:
                grads = torch.autograd.grad(
                    step.objective(params), list(params.values()), create_graph=True
                )
                params, state = replace(rule, lr=step.lr).step(
                    params, dict(zip(params, grads, strict=True)), state
                )
            outputs = [*(params[k] for k in dtheta), *(state[k] for k in dstate)]
            inputs = [*theta.values(), *leaves.values(), *teacher]
            back = torch.autograd.grad(
                outputs, inputs, [*dtheta.values(), *dstate.values()], allow_unused=True
            )
        back_theta, back_state = back[: len(theta)], back[len(theta) : len(inputs) - len(teacher)]
        dtheta = {
            k: torch.zeros_like(p) if b is None else b
            for (k, p), b in zip(theta.items(), back_theta, strict=True)
        }
        dstate = {
            k: torch.zeros_like(v) if b is None else b
            for (k, v), b in zip(leaves.items(), back_state, strict=True)
        }
        for acc, d in zip(dteacher, back[len(inputs) - len(teacher) :], strict=True):
            if d is not None:  # a teacher parameter these steps did not use
                acc.add_(d)
    return dteacher
