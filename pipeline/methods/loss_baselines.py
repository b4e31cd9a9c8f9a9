"""The loss functions L2T-DLF is compared with (Wu et al. 2018, section 4.1).

smooth_01: -log sigmoid(K (log p_y - max_{k != y} log p_k)) / K, a smooth 0-1 accuracy (Nguyen &
    Sanner 2013) extended to many classes as in the DLF paper; K = 50 there. Divided by K (the
    same minimiser) so that its gradient is no larger than cross entropy's: undivided, K = 50
    multiplies the step by up to 50 and every student diverged at the paper's learning rates
    (MNIST-10k MLP: 11.6% test accuracy, chance).
large_margin: the large-margin softmax (Liu et al. 2016): the target logit ||w_y|| ||x|| cos(t)
    becomes ||w_y|| ||x|| psi(t), psi(t) = (-1)^k cos(m t) - 2k on [k pi / m, (k+1) pi / m],
    blended as (beta W_y x + ||w_y|| ||x|| psi(t)) / (1 + beta) with beta annealed from
    `beta_start` by `beta_decay` per step down to `beta_min`, as in the authors' code. It acts
    on the student's last layer (its bias kept on every logit); prediction uses the plain logits.
softmax_margin: the softmax-margin loss (Gimpel & Smith 2010), the translation baseline of the
    DLF paper's Table 3 (after Edunov et al. 2018): the task's own loss on logits raised by
    `margin` on every wrong class or token, a Hamming cost, so the target must win by the
    margin. Token-level: Edunov et al.'s sequence-level version scores beam-search candidates
    with a 1 - BLEU cost, which needs a beam search at every training step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.methods.base import Batch, Method
from pipeline.methods.settings import (
    LargeMarginSettings,
    Smooth01Settings,
    SoftmaxMarginSettings,
)


class Smooth01(Method):
    Settings = Smooth01Settings

    def step(self, batch: Batch):
        log_p = F.log_softmax(self.student.model(batch.x), 1)
        target = log_p.gather(1, batch.y[:, None]).squeeze(1)
        rival = log_p.scatter(1, batch.y[:, None], float("-inf")).amax(1)
        k = self.settings.sharpness
        loss = -F.logsigmoid(k * (target - rival)).mean() / k
        self.student.update(loss)
        return {"loss": loss.detach()}


def large_margin_logits(
    features: torch.Tensor, classifier: torch.nn.Linear, y: torch.Tensor, m: int, beta: float
) -> torch.Tensor:
    """Logits with the target replaced by its large-margin version."""
    logits = classifier(features)
    w = classifier.weight[y]
    norms = w.norm(dim=1) * features.norm(dim=1)
    cos = ((w * features).sum(1) / norms.clamp_min(1e-12)).clamp(-1, 1)
    angle = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    k = torch.floor(angle * m / math.pi).detach()
    psi = (-1) ** k * torch.cos(m * angle) - 2 * k
    plain = (w * features).sum(1)
    target = (beta * plain + norms * psi) / (1 + beta)
    bias = classifier.bias[y] if classifier.bias is not None else 0
    return logits.scatter(1, y[:, None], (target + bias)[:, None])


class LargeMargin(Method):
    Settings = LargeMarginSettings

    def step(self, batch: Batch):
        s, model = self.settings, self.student.model
        beta = max(s.beta_min, s.beta_start * s.beta_decay**self.student.step_count)
        logits = large_margin_logits(
            model.features(batch.x), model.classifier, batch.y, s.margin, beta
        )
        loss = F.cross_entropy(logits, batch.y)
        self.student.update(loss)
        return {"loss": loss.detach(), "beta": torch.tensor(beta)}


def cost_augmented(logits: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """Logits plus `margin` on every class but the target (a translation's targets trimmed
    to the logits' length, as its loss does)."""
    target = y[:, : logits.shape[1]] if y.dim() == 2 else y
    return logits + margin * (1 - F.one_hot(target, logits.shape[-1]).to(logits.dtype))


class SoftmaxMargin(Method):
    Settings = SoftmaxMarginSettings
    task_kinds = ("classification", "translation")

    def step(self, batch: Batch):
        task = self.ctx.task
        logits = task.forward(self.student.model, batch.x, batch.y)
        loss = task.losses(cost_augmented(logits, batch.y, self.settings.margin), batch.y).mean()
        self.student.update(loss)
        return {"loss": loss.detach()}
