"""Focal loss (Lin et al. 2017): each example's cross entropy scaled by (1 - p_y)^gamma, the
factor differentiated too; gamma = 0 is cross entropy. The deep-interactions paper searches
gamma in {0.5, 1, 2} on validation: define one variant per gamma in params.yaml."""

from __future__ import annotations

import torch.nn.functional as F

from pipeline.methods.base import Batch, Method
from pipeline.methods.settings import FocalSettings


class Focal(Method):
    Settings = FocalSettings

    def step(self, batch: Batch):
        log_p = F.log_softmax(self.student.model(batch.x), 1).gather(1, batch.y[:, None])
        loss = -((1 - log_p.exp()) ** self.settings.gamma * log_p).mean()
        self.student.update(loss)
        return {"loss": loss.detach()}
