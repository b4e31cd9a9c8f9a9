"""Learning to Reweight Examples (Ren et al. 2018), Algorithm 1, through the shared core.

Each step: the weights eps of the batch start at 0 (lines 5-7: the virtual step is the real
optimiser's step with a zero loss gradient); d = A^T grad of the validation loss after it
(lines 8-9); then dR/deps_i is the directional derivative of example i's loss along d
(line 10), given by one forward-mode JVP, clamped at 0 and normalised to sum 1 with the
all-zero guard (line 11, Eq. 9); the weighted loss is the real step (lines 12-14).
"""

from __future__ import annotations

import torch

from pipeline.core.meta import (
    forward_with_tangent,
    lookahead_direction,
    lookahead_loss,
    tangent_only,
)
from pipeline.core.student import cross_entropy
from pipeline.core.traced import forward_with_tangent_traced
from pipeline.methods.base import Batch, Method, weight_by_noise
from pipeline.methods.settings import L2RWSettings


def normalise_weights(raw: torch.Tensor) -> torch.Tensor:
    """Eq. 9: clamp at 0, divide by the sum; an all-zero batch keeps zero weights."""
    w = raw.clamp_min(0)
    total = w.sum()
    return w / (total + (total == 0).to(w.dtype))


class L2RW(Method):
    Settings = L2RWSettings

    SAMPLED_STEPS = 50  # batches whose weights are kept for the weight-distribution figure

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        self.zero = {k: torch.zeros_like(p) for k, p in ctx.student.model.named_parameters()}
        self.sample: dict[str, list] = {"weights": [], "noisy": []}

    def record(self, w: torch.Tensor, noisy: torch.Tensor) -> None:
        """Keep the weights (times the batch size) of the batches from half-way through
        training, as Ren et al. Figure 3 looks at a model trained for half the iterations."""
        start = self.student.total_steps // 2
        if start <= self.student.step_count < start + self.SAMPLED_STEPS:
            self.sample["weights"].append((w.detach() * len(w)).cpu())
            self.sample["noisy"].append(noisy.cpu())

    def state_dict(self) -> dict:
        return {"weight_sample": self.sample}

    def load_state_dict(self, state: dict) -> None:
        self.sample = state["weight_sample"]

    def weights(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised weights, per-example losses with their graph, validation loss)."""
        model, route = self.student.model, self.settings.route
        vx, vy = self.val_batch(self.settings.val_batch_size)
        rule, momentum = self.student.rule(), self.student.optimizer_state()

        def per_example(out):
            return cross_entropy(out, batch.y)

        if route == "double_backward":
            losses = per_example(model(batch.x))
            eps = torch.zeros_like(losses, requires_grad=True)
            named = dict(model.named_parameters())
            grads = torch.autograd.grad(
                (eps * losses).sum(), list(named.values()), create_graph=True
            )
            grads = dict(zip(named, grads, strict=True))
            val_loss = lookahead_loss(model, rule, momentum, grads, vx, vy)
            (tangent,) = torch.autograd.grad(val_loss, eps)
            val_loss = val_loss.detach()
        else:
            direction, val_loss = lookahead_direction(model, rule, momentum, self.zero, vx, vy)
            if route == "jvp_fused":
                losses, tangent = forward_with_tangent(model, batch.x, direction, per_example)
            elif route == "jvp_traced":
                losses, tangent = forward_with_tangent_traced(
                    model, batch.x, direction, per_example
                )
            else:
                _, tangent = tangent_only(model, batch.x, direction, per_example)
                losses = per_example(model(batch.x))
        # dR/deps_i = tangent_i; the weights are constants of the step (Alg. 1 line 12).
        w = normalise_weights(-tangent.detach())
        if not torch.isfinite(w.sum()):
            raise FloatingPointError("L2RW produced non-finite example weights")
        return w, losses, val_loss

    def step(self, batch: Batch):
        w, losses, val_loss = self.weights(batch)
        loss = (w * losses).sum()
        noisy = self.ctx.data.noise_mask[batch.index]
        self.record(w, noisy)
        self.note_weights(batch, w * len(w))
        self.student.update(loss)
        return {
            "loss": loss.detach(),
            "val_loss": val_loss,
            "zero_weight_frac": (w == 0).float().mean(),
            **weight_by_noise(w, noisy),
        }
