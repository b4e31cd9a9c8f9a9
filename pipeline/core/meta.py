"""The meta-gradient primitive shared by every teaching method.

The student's training loss is L(theta, omega) = sum_i l(z_i(theta); s_i(omega)): z_i are the
student's per-example outputs (logits, or per-example losses) and s_i the teacher's signal
(a weight, a target distribution, loss coefficients). After the look-ahead step
theta' = step(theta, grad_theta L) of the real optimiser, the validation loss R(theta') has

    dR/domega = d/domega sum_i < dl/dz (z_i; s_i(omega)), J_i d >,    d = A^T grad R(theta'),

where A = d theta' / d grad is the (linear) Jacobian of the optimiser step and J_i d the
directional derivative of z_i along d. All J_i d of a batch come from ONE forward-mode JVP of
the student, and the teacher's gradient is an ordinary backward through the teacher with the
tangents held fixed: no double backward through the student, any architecture, batch norm
included. (docs/methods.md; tests/test_core.py checks each identity
against double backward through the virtual step in float64.)

Batch norm: the look-ahead's validation forward runs in train mode on *copies* of the buffers,
so running statistics are updated once per step, by the real training forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, vjp

from pipeline.core.optim import Rule, State, Tensors


def params_of(model: nn.Module) -> Tensors:
    return dict(model.named_parameters())


def buffer_copies(model: nn.Module) -> Tensors:
    return {k: b.clone() for k, b in model.named_buffers()}


def bound(model: nn.Module, params: Tensors):
    """`model` as a function of its inputs at `params` (on fresh buffer copies), called like
    the module itself."""
    buffers = buffer_copies(model)
    return lambda *args, **kwargs: functional_call(model, (params, buffers), args, kwargs)


def loss_and_grad(
    model: nn.Module,
    params: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, Tensors]:
    """Mean cross entropy at `params` and its gradient; batch-norm buffers are copies."""
    params = {k: p.detach().requires_grad_() for k, p in params.items()}
    with torch.enable_grad():
        out = functional_call(model, (params, buffer_copies(model)), (x,))
        loss = nn.functional.cross_entropy(out, y)
        grads = torch.autograd.grad(loss, list(params.values()))
    return loss.detach(), dict(zip(params, grads, strict=True))


def lookahead_loss(
    model: nn.Module,
    rule: Rule,
    momentum: State,
    grads: Tensors,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
) -> torch.Tensor:
    """R(theta') with theta' = step(theta, grads), differentiable in `grads` and the
    parameters: the double-backward reference route (Ren et al. Alg. 1, lines 7-9)."""
    theta1, _ = rule.step(params_of(model), grads, momentum)
    out = functional_call(model, (theta1, buffer_copies(model)), (val_x,))
    return nn.functional.cross_entropy(out, val_y)


def lookahead_direction(
    model: nn.Module,
    rule: Rule,
    momentum: State,
    grads: Tensors,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
) -> tuple[Tensors, torch.Tensor]:
    """d = A^T grad R(theta') with theta' = step(theta, grads), and R(theta').

    `grads` is the training gradient at the teacher's current signal (zero for L2RW, whose
    weights start at 0); `momentum` the optimiser's buffers, so the virtual step is the real one.
    """
    theta = {k: p.detach() for k, p in params_of(model).items()}

    def step(g: Tensors) -> Tensors:
        return rule.step(theta, g, momentum)[0]

    theta1, pullback = vjp(step, grads)
    val_loss, v = loss_and_grad(model, theta1, val_x, val_y)
    (d,) = pullback(v)
    return d, val_loss


def forward_with_tangent(
    model: nn.Module,
    x: torch.Tensor,
    direction: Tensors,
    head: Callable[[torch.Tensor], torch.Tensor] = lambda out: out,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training forward giving head(model(x)) with its autograd graph to the parameters
    (for the ordinary backward) and its tangent along `direction` (the per-example J_i d).
    The forward uses the real buffers: it is the step's one batch-norm statistics update."""
    params = params_of(model)
    with fwAD.dual_level():
        dual = {k: fwAD.make_dual(p, direction[k]) for k, p in params.items()}
        out = head(functional_call(model, dual, (x,)))
        primal, tangent = fwAD.unpack_dual(out)
    return primal, tangent


def tangent_only(
    model: nn.Module,
    x: torch.Tensor,
    direction: Tensors,
    head: Callable[[torch.Tensor], torch.Tensor] = lambda out: out,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like forward_with_tangent but without an autograd graph and on buffer copies: for
    tangents at a point that is not the training forward (lower memory, one extra forward)."""
    params = {k: p.detach() for k, p in params_of(model).items()}
    with torch.no_grad(), fwAD.dual_level():
        dual = {k: fwAD.make_dual(p, direction[k]) for k, p in params.items()}
        out = head(functional_call(model, (dual, buffer_copies(model)), (x,)))
        primal, tangent = fwAD.unpack_dual(out)
    return primal, tangent


def teacher_surrogate(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    outputs: torch.Tensor,
    tangents: torch.Tensor,
    signal: torch.Tensor,
) -> torch.Tensor:
    """A scalar whose gradient with respect to the teacher (through `signal`) is dR/domega:
    sum_i < dl/dz (z_i; s_i), J_i d >, with z_i and J_i d held fixed.

    `loss(z, s)` gives the per-example training loss l_i (with the method's own 1/n), so the
    same function serves every signal kind: weights (z = per-example losses, l = w * z),
    target distributions (z = logits, l = CE(q, z)) and loss coefficients (DLF's l_Phi).
    """
    z = outputs.detach().requires_grad_()
    with torch.enable_grad():
        (dl_dz,) = torch.autograd.grad(loss(z, signal).sum(), z, create_graph=True)
    return (dl_dz * tangents.detach()).sum()


def weights_loss(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-example weighted loss: the signal is a weight on each example's loss."""
    return w * z


def targets_loss(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Cross entropy of logits z against target distributions q (mean over the batch)."""
    return -(q * torch.log_softmax(z, -1)).sum(-1) / len(z)
