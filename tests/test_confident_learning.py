"""Confident learning (cleanlab) as a baseline ranking: its probabilities are out of sample,
it finds flipped labels on data where a linear model separates the classes, and its student
trains on the examples it does not flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.detection import ranking_quality
from pipeline.methods.confident_learning import label_issues, out_of_sample_probabilities


def blobs(n: int = 400, flip: float = 0.2, seed: int = 0):
    """Three well-separated Gaussian classes, `flip` of the labels moved to another class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.6, (n, 2)) + np.array([[0, 0], [4, 0], [0, 4]])[y]
    flipped = rng.random(n) < flip
    given = np.where(flipped, (y + rng.integers(1, 3, n)) % 3, y)
    return x, given, flipped


def test_the_probabilities_are_out_of_sample():
    """A row that is its class's only outlier: in-sample it would be fitted; out of sample
    the other rows predict it, so its given label gets a low probability."""
    x, y, _ = blobs(flip=0.0)
    y = y.copy()
    y[0] = (y[0] + 1) % 3  # one wrong label, far inside another class
    p = out_of_sample_probabilities(x, y, folds=5, inverse_regularisation=1.0, seed=0)
    assert p.shape == (len(y), 3) and np.allclose(p.sum(1), 1)
    assert p[0, y[0]] < 0.05


def test_cleanlab_finds_flipped_labels():
    x, y, flipped = blobs()
    p = out_of_sample_probabilities(x, y, folds=5, inverse_regularisation=1.0, seed=0)
    quality, flagged = label_issues(y, p)
    assert ranking_quality(flipped[np.argsort(quality)])["auc"] > 0.9
    assert flipped[flagged].mean() > 0.8 and flagged[flipped].mean() > 0.6


def test_too_few_examples_for_the_folds_is_a_clear_error():
    x, y, _ = blobs(n=12, flip=0.0)
    with pytest.raises(ValueError, match="fewer than the 10 folds"):
        out_of_sample_probabilities(x, y, folds=10, inverse_regularisation=1.0, seed=0)


def test_the_student_learns_only_from_unflagged_examples():
    """One step of the method equals one step of cross entropy over the batch's kept
    examples; the weight it records is cleanlab's label quality."""
    import copy

    from test_methods import digits_task

    from pipeline.config import NoiseSpec, ScheduleSpec
    from pipeline.core.student import Student, cross_entropy
    from pipeline.examples import ExampleWeights
    from pipeline.methods.base import Batch, Context
    from pipeline.methods.confident_learning import ConfidentLearning
    from pipeline.methods.settings import ConfidentLearningSettings
    from pipeline.models import build_model
    from pipeline.noise import generator

    data = digits_task(NoiseSpec(kind="uniform", rate=0.3, val_size=100))
    schedule = ScheduleSpec(epochs=1, batch_size=40, lr=0.1, momentum=0.9)
    torch.manual_seed(0)
    model = build_model("mlp", data.in_shape, data.num_classes, hidden=[16])
    reference = Student(copy.deepcopy(model), schedule, 10)
    weights = ExampleWeights(len(data.train_y))
    ctx = Context(Student(model, schedule, 10), data, schedule, generator("m", 0), {}, weights)
    method = ConfidentLearning(ConfidentLearningSettings(folds=3), ctx)
    flagged = ~method.keep
    assert data.noise_mask[flagged].float().mean() > 0.5  # most flagged labels were flipped
    index = torch.arange(40)
    kept = method.keep[index]
    assert 0 < int(kept.sum()) < 40
    batch = Batch(data.train_x[index], data.train_y[index], index)
    method.step(batch)
    losses = cross_entropy(reference.model(batch.x), batch.y)
    reference.update(losses[kept].mean())
    for k, v in reference.model.state_dict().items():
        assert torch.allclose(model.state_dict()[k], v, atol=1e-6), k
    assert torch.allclose(weights.last[index], method.quality[index])
