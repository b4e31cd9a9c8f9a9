"""Self-paced learning (Kumar et al. 2010): train on the easy examples first. An example is
kept (weight 1) when its loss is below the threshold lambda and dropped (weight 0) otherwise;
lambda grows so that the kept fraction of each batch rises linearly from `start_fraction` to
all of it at `full_at` (a fraction of training), the usual batch-wise form of SPL's schedule."""

from __future__ import annotations

import math

from pipeline.core.student import cross_entropy
from pipeline.methods.base import Batch, Method
from pipeline.methods.settings import SelfPacedSettings


class SelfPaced(Method):
    Settings = SelfPacedSettings

    def kept_fraction(self) -> float:
        s = self.settings
        progress = self.student.step_count / (s.full_at * self.student.total_steps)
        return min(1.0, s.start_fraction + (1 - s.start_fraction) * progress)

    def step(self, batch: Batch):
        losses = cross_entropy(self.student.model(batch.x), batch.y)
        keep = math.ceil(self.kept_fraction() * len(losses))
        threshold = losses.detach().kthvalue(keep).values  # lambda: the keep-th smallest loss
        v = (losses.detach() <= threshold).to(losses.dtype)
        loss = (v * losses).sum() / v.sum()
        self.student.update(loss)
        return {"loss": loss.detach(), "kept": v.mean()}
