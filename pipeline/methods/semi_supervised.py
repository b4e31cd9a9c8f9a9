"""Semi-supervised baselines of Meta Pseudo Labels Table 1 (few-label splits: the labelled
examples are the validation split, the training split is unlabelled). The supervised,
label-smoothing and RandAugment rows are `clean_only` variants (l2rw_baselines.py).

pseudo_label: Lee 2013. Cross entropy on a labelled batch plus w(t) times the cross entropy of
    the unlabelled batch against the student's own argmax predictions (those at least
    `threshold` confident). w ramps linearly from 0 to `weight` over the first `rampup`
    fraction of training, so the model labels nothing before it has learned from the labels.
uda: Xie et al. 2019. Cross entropy on a labelled batch plus `weight` times the consistency
    between the prediction on the unlabelled image (the target: sharpened by `temperature`,
    no gradient) and on a strong augmentation of it, counted only where the target's
    confidence is at least `threshold` (the confidence mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.augment import augment
from pipeline.methods.base import Batch, Method
from pipeline.methods.settings import PseudoLabelSettings, UDASettings


def uda_consistency(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, temperature: float, threshold: float
) -> torch.Tensor:
    """UDA's masked consistency: cross entropy of the strong view's prediction against the
    sharpened weak-view prediction (a constant), averaged over the whole batch."""
    weak = weak_logits.detach()
    target = F.softmax(weak / temperature, 1)
    mask = (F.softmax(weak, 1).amax(1) >= threshold).to(weak)
    return (mask * -(target * F.log_softmax(strong_logits, 1)).sum(1)).mean()


class PseudoLabel(Method):
    uses_unlabelled = True

    Settings = PseudoLabelSettings

    def step(self, batch: Batch):
        s, student = self.settings, self.student
        vx, vy = self.val_batch(s.labelled_batch_size)
        logits = student.model(torch.cat([vx, batch.x]))
        labelled, unlabelled = logits[: len(vy)], logits[len(vy) :]
        confidence, label = F.softmax(unlabelled.detach(), 1).max(1)
        mask = (confidence >= s.threshold).to(unlabelled)
        pseudo = (mask * F.cross_entropy(unlabelled, label, reduction="none")).mean()
        ramp = min(1.0, student.step_count / max(1.0, s.rampup * student.total_steps))
        loss = F.cross_entropy(labelled, vy) + s.weight * ramp * pseudo
        logged = {"loss": loss.detach(), "pseudo_loss": pseudo.detach(), "mask": mask.mean()}
        if s.gradient_cosine:
            params = list(student.model.parameters())
            grads = torch.autograd.grad(pseudo, params, retain_graph=True)
            logged["grad_cosine"] = self.gradient_cosine(grads, vx, vy)
        student.update(loss)
        return logged


class UDA(Method):
    uses_unlabelled = True

    Settings = UDASettings

    def step(self, batch: Batch):
        s, model = self.settings, self.student.model
        vx, vy = self.val_batch(s.labelled_batch_size)
        strong = augment(batch.x, s.augment, self.ctx.generator)
        logits = model(torch.cat([vx, batch.x, strong]))
        n, m = len(vy), len(batch.x)
        consistency = uda_consistency(
            logits[n : n + m], logits[n + m :], s.temperature, s.threshold
        )
        loss = F.cross_entropy(logits[:n], vy) + s.weight * consistency
        self.student.update(loss)
        return {"loss": loss.detach(), "consistency": consistency.detach()}
