"""ERM: the plain baseline, the mean of the task's loss on the observed labels (cross entropy;
a translation's label-smoothed sentence NLL)."""

from __future__ import annotations

from pipeline.methods.base import Batch, Method


class ERM(Method):
    task_kinds = ("classification", "translation")

    def step(self, batch: Batch):
        loss = self.losses(self.student.model, batch.x, batch.y).mean()
        self.student.update(loss)
        return {"loss": loss.detach()}
