"""The baselines of Ren et al. 2018 (sections 4.1 and 4.2), each a small rule on the batch.

Weighted losses are normalised to sum 1 over the batch, like L2RW's weights, so every
method takes steps of the same scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.augment import augment
from pipeline.core.student import cross_entropy
from pipeline.methods.base import Batch, Method
from pipeline.methods.settings import BootstrapSettings, CleanOnlySettings, HardMiningSettings


class _WeightedLoss(Method):
    """Sum_i w_i CE_i with weights from `weights`, normalised to sum 1."""

    def weights(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def step(self, batch: Batch):
        w = self.weights(batch)
        w = w / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
        loss = (w * cross_entropy(self.student.model(batch.x), batch.y)).sum()
        self.student.update(loss)
        return {"loss": loss.detach()}


class RandomWeights(_WeightedLoss):
    """RANDOM, Eq. 16: w_i = max(z_i, 0) / sum_j max(z_j, 0), z_i ~ N(0, 1)."""

    def weights(self, batch):
        z = torch.randn(len(batch.y), generator=self.ctx.generator).to(batch.x.device)
        return z.clamp_min(0)


class Proportion(_WeightedLoss):
    """PROPORTION: each example weighted by the inverse frequency of its (observed) class."""

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        y = ctx.data.train_y[ctx.data.train_y >= 0]
        self.inverse_frequency = 1.0 / torch.bincount(y, minlength=ctx.data.num_classes).clamp_min(
            1
        )

    def weights(self, batch):
        return self.inverse_frequency[batch.y].float()


class OracleWeighted(_WeightedLoss):
    """WEIGHTED (background flip): the oracle fraction of clean examples among those labelled
    with each class weights that class's examples. It reads the true labels: an oracle."""

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        d, c = ctx.data, ctx.data.num_classes
        labelled = d.train_y >= 0
        total = torch.bincount(d.train_y[labelled], minlength=c).clamp_min(1)
        clean = torch.bincount(d.train_y[labelled & ~d.noise_mask], minlength=c)
        self.clean_fraction = clean.float() / total

    def weights(self, batch):
        return self.clean_fraction[batch.y]


class Resample(Method):
    """RESAMPLE: a class-balanced batch each step (class uniform, then example uniform)."""

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        y = ctx.data.train_y.cpu()
        self.members = [(y == c).nonzero().squeeze(1) for c in range(ctx.data.num_classes)]
        self.members = [m for m in self.members if len(m)]

    def draw(self, n: int) -> torch.Tensor:
        g = self.ctx.generator
        classes = torch.randint(0, len(self.members), (n,), generator=g)
        picks = [
            self.members[c][torch.randint(0, len(self.members[c]), (1,), generator=g)]
            for c in classes.tolist()
        ]
        return torch.cat(picks).to(self.ctx.data.train_x.device)

    def step(self, batch: Batch):
        index, d = self.draw(len(batch.y)), self.ctx.data
        loss = cross_entropy(self.student.model(d.train_x[index]), d.train_y[index]).mean()
        self.student.update(loss)
        return {"loss": loss.detach()}


class HardMining(Method):
    """HARD MINING: keep every minority-class example of the batch and only the hardest
    `majority_keep` fraction (highest loss) of the majority class's examples."""

    Settings = HardMiningSettings

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        counts = torch.bincount(ctx.data.train_y[ctx.data.train_y >= 0])
        self.majority = int(counts.argmax())

    def keep(self, losses: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mask of the examples trained on: all minority ones, the hardest majority ones."""
        major = y == self.majority
        keep = ~major
        if major.any():
            k = max(1, round(self.settings.majority_keep * int(major.sum())))
            hardest = losses.detach().masked_fill(~major, -float("inf")).topk(k).indices
            keep[hardest] = True
        return keep

    def step(self, batch: Batch):
        losses = cross_entropy(self.student.model(batch.x), batch.y)
        loss = losses[self.keep(losses, batch.y)].mean()
        self.student.update(loss)
        return {"loss": loss.detach()}


class Bootstrap(Method):
    """Reed et al. 2014 bootstrapping: the target is beta * label + (1 - beta) * prediction,
    soft (the predicted distribution) or hard (its argmax); the prediction is held fixed."""

    Settings = BootstrapSettings

    def step(self, batch: Batch):
        logits = self.student.model(batch.x)
        prediction = logits.detach().softmax(-1)
        if self.settings.mode == "hard":
            prediction = F.one_hot(prediction.argmax(-1), logits.shape[1]).to(logits.dtype)
        target = (
            self.settings.beta * F.one_hot(batch.y, logits.shape[1]).to(logits.dtype)
            + (1 - self.settings.beta) * prediction
        )
        loss = -(target * logits.log_softmax(-1)).sum(-1).mean()
        self.student.update(loss)
        return {"loss": loss.detach()}


class CleanOnly(Method):
    """CLEAN ONLY: cross entropy on the clean validation split alone (same number of steps).
    In a few-label split (MPL's setting) that split is the labelled set, so this is the
    supervised baseline; `label_smoothing` and `augment` (pipeline/augment.py) give MPL
    Table 1's "Label Smoothing" and "RandAugment" rows. Its step count is that of a method
    that also reads the unlabelled examples, so it is compared at an equal number of steps."""

    uses_unlabelled = True

    Settings = CleanOnlySettings

    def step(self, batch: Batch):
        x, y = self.val_batch(len(batch.y))
        x = augment(x, self.settings.augment, self.ctx.generator)
        logits = self.student.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.settings.label_smoothing)
        self.student.update(loss)
        return {"loss": loss.detach()}
