"""ERM: the plain baseline, mean cross entropy on the observed labels."""

from __future__ import annotations

from pipeline.core.student import cross_entropy
from pipeline.methods.base import Batch, Method


class ERM(Method):
    def step(self, batch: Batch):
        loss = cross_entropy(self.student.model(batch.x), batch.y).mean()
        self.student.update(loss)
        return {"loss": loss.detach()}
