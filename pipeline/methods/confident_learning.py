"""Confident learning (Northcutt, Jiang and Chuang 2021, "Confident Learning: Estimating
Uncertainty in Dataset Labels"), by cleanlab: the field's standard detector of wrong labels,
as a baseline beside the learned teachers.

Before training, each labelled training example gets out-of-sample class probabilities from a
`folds`-fold cross-validated logistic regression on the student's standardised inputs (the
setting of cleanlab's own examples; inputs flattened). cleanlab's label quality (the
self-confidence: the probability of the given label) ranks the examples, lowest first, and
its `find_label_issues` flags the labels it estimates wrong from the confident joint. The
student then trains by cross entropy on the unflagged examples (`prune`, as cleanlab's
CleanLearning does), each batch's weights normalised to sum 1 like the other reweighting
baselines'. What examples.csv records as the example's weight is its label quality, so the
suspects stage ranks by cleanlab's score.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.student import cross_entropy
from pipeline.methods.base import Batch, Method
from pipeline.methods.settings import ConfidentLearningSettings


def out_of_sample_probabilities(
    x: np.ndarray, y: np.ndarray, folds: int, inverse_regularisation: float, seed: int
) -> np.ndarray:
    """Class probabilities of each row from a logistic regression that never saw it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    smallest = int(np.bincount(y).min(initial=len(y)) if len(y) else 0)
    if smallest < folds:
        raise ValueError(
            f"confident_learning: a class has {smallest} labelled examples, fewer than the "
            f"{folds} folds of its cross-validation (set `folds` lower)"
        )
    model = LogisticRegression(C=inverse_regularisation, max_iter=2000)
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, x, y, cv=split, method="predict_proba")


def label_issues(y: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's label quality of each example (self-confidence) and whether it flags it."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(y, probabilities, method="self_confidence")
    return quality, find_label_issues(y, probabilities)


class ConfidentLearning(Method):
    Settings = ConfidentLearningSettings

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        data = ctx.data
        labelled = data.labelled.nonzero()[:, 0].cpu()
        x = data.train_x[labelled].flatten(1).double().cpu().numpy()
        y = data.train_y[labelled].cpu().numpy()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
        probabilities = out_of_sample_probabilities(
            x, y, settings.folds, settings.inverse_regularisation, seed
        )
        quality, flagged = label_issues(y, probabilities)
        device = data.train_y.device
        self.quality = torch.zeros(len(data.train_y), dtype=torch.float64)
        self.quality[labelled] = torch.from_numpy(quality)
        self.quality = self.quality.to(device)
        self.keep = torch.ones(len(data.train_y), dtype=torch.bool)
        if settings.prune:
            self.keep[labelled[torch.from_numpy(flagged)]] = False
        self.keep = self.keep.to(device)
        self.flagged = int(flagged.sum())

    def step(self, batch: Batch):
        self.note_weights(batch, self.quality[batch.index])
        losses = cross_entropy(self.student.model(batch.x), batch.y)
        w = self.keep[batch.index].to(losses.dtype)
        w = w / w.sum().clamp_min(1.0)  # an all-flagged batch: no loss, momentum goes on
        loss = (w * losses).sum()
        self.student.update(loss)
        return {"loss": loss.detach(), "kept": self.keep[batch.index].double().mean()}
