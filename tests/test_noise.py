"""The noise stage: realised rates match the settings, splits are disjoint and seeded."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import DatasetSpec, NoiseSpec
from pipeline.data import RawDataset
from pipeline.noise import UNLABELLED, make_split

N, C = 20000, 10


@pytest.fixture(scope="module")
def data() -> RawDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N) % C
    return RawDataset(
        "synthetic",
        torch.randint(0, 255, (N, 1, 2, 2), generator=g, dtype=torch.uint8),
        y,
        torch.arange(N) >= N - 2000,
        [str(c) for c in range(C)],
    )


DSPEC = DatasetSpec(source="sklearn_digits")


def within(observed: float, p: float, n: int, sigmas: float = 5) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-12


def split(data, seed=0, **kw):
    return make_split(data, DSPEC, NoiseSpec(**kw), seed)


def test_splits_are_disjoint_and_test_is_official(data):
    s = split(data, kind="none", val_size=1000)
    sets = [set(s[f"{k}_idx"].tolist()) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(sets[1]) == 1000 and sets[2] == set(range(N - 2000, N))
    assert len(sets[0]) + len(sets[1]) == N - 2000
    assert s["realised_rate"] == 0 and torch.equal(s["train_y"], s["train_y_clean"])


def test_seed_changes_validation_not_test(data):
    a, b, a2 = (split(data, seed, kind="uniform", rate=0.4, val_size=500) for seed in (0, 1, 0))
    assert torch.equal(a["val_idx"], a2["val_idx"]) and torch.equal(a["train_y"], a2["train_y"])
    assert not torch.equal(a["val_idx"], b["val_idx"])
    assert torch.equal(a["test_idx"], b["test_idx"])


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6])
def test_uniform_rate_and_targets(data, rate):
    s = split(data, kind="uniform", rate=rate, val_size=1000)
    n = len(s["train_y"])
    assert within(s["realised_rate"], rate, n)
    assert s["noise_mask"].float().mean().item() == pytest.approx(s["realised_rate"])
    t = s["transition"]
    assert torch.allclose(t.sum(1), torch.ones(C, dtype=t.dtype))
    off = t[~torch.eye(C, dtype=torch.bool)]  # each wrong class gets rate / (C - 1)
    assert (off - rate / (C - 1)).abs().max() < 0.03


def test_uniform_flips_nest_across_rates(data):
    low, high = (split(data, kind="uniform", rate=r, val_size=1000) for r in (0.2, 0.4))
    assert torch.equal(low["train_idx"], high["train_idx"])
    assert bool((low["noise_mask"] <= high["noise_mask"]).all())


def test_flip_similar_goes_to_two_classes(data):
    s = split(data, kind="flip_similar", rate=0.4, val_size=1000)
    t = s["transition"]
    for c in range(C):
        targets = [j for j in range(C) if j != c and t[c, j] > 0]
        assert sorted(targets) == sorted(s["similar"][c]) and c not in s["similar"][c]
        assert all(abs(t[c, j] - 0.2) < 0.05 for j in targets)
    assert within(s["realised_rate"], 0.4, len(s["train_y"]))


def test_background_flip(data):
    s = split(data, kind="background", rate=0.4, val_per_class=10, background=3)
    y, clean = s["train_y"], s["train_y_clean"]
    assert bool((y[y != clean] == 3).all())
    assert bool((y[clean == 3] == 3).all())  # the background class itself never flips
    nonbg = clean != 3
    assert within(float((y[nonbg] != clean[nonbg]).float().mean()), 0.4, int(nonbg.sum()))
    assert torch.bincount(s["val_y"], minlength=C).tolist() == [10] * C


def test_background_drawn_from_seed(data):
    def background(seed: int) -> int:
        return split(data, seed=seed, kind="background", rate=0.4, val_per_class=10)["background"]

    drawn = [background(seed) for seed in range(6)]
    assert all(0 <= b < C for b in drawn) and background(0) == drawn[0]
    assert len(set(drawn)) > 1  # the seed picks it, not a constant


def test_imbalance(data):
    s = split(
        data,
        kind="imbalance",
        classes=(4, 9),
        majority_fraction=0.95,
        train_size=400,
        val_per_class=5,
    )
    assert s["num_classes"] == 2 and s["class_names"] == ["4", "9"]
    counts = torch.bincount(s["train_y"], minlength=2).tolist()
    assert counts == [20, 380]
    assert torch.bincount(s["val_y"], minlength=2).tolist() == [5, 5]
    assert set(s["test_y"].tolist()) == {0, 1}
    assert len(s["test_idx"]) == 400  # 200 of each class in the official test part


def test_few_labels(data):
    s = split(data, kind="few_labels", labels=400)
    assert bool((s["train_y"] == UNLABELLED).all())
    assert torch.bincount(s["val_y"], minlength=C).tolist() == [40] * C
    assert len(s["train_idx"]) == N - 2000 - 400


def test_carved_test_split_is_fixed_across_seeds():
    y = torch.arange(1000) % 5
    data = RawDataset(
        "nofficial", torch.zeros(1000, 3), y, torch.zeros(1000, dtype=torch.bool), list("abcde")
    )
    spec = DatasetSpec(source="two_moons", test_size=200)
    a, b = (make_split(data, spec, NoiseSpec(kind="none", val_size=100), s) for s in (0, 1))
    assert len(a["test_idx"]) == 200 and torch.equal(a["test_idx"], b["test_idx"])
    with pytest.raises(ValueError, match="test_size"):
        make_split(data, DatasetSpec(source="two_moons"), NoiseSpec(kind="none", val_size=10), 0)
