"""The noise stage: a train / clean validation / test split and a corruption of the training
labels, as a function of (dataset, noise setting, seed) only, so every method of an experiment
sees exactly the same data.

Randomness: the test split of a source without an official one is fixed (seed 0) so that all
seeds are scored on the same examples; the validation split and the noise follow the run's seed.
Noise draws one uniform number per training example and flips where it falls below the rate,
so with one seed the flipped set of a lower rate is contained in that of a higher rate.
"""

from __future__ import annotations

import zlib

import torch

from pipeline import plan
from pipeline.config import DatasetSpec, NoiseSpec, Params, ParamsError
from pipeline.data import RawDataset
from pipeline.data.translation_sources import EOS, MASK, PAD
from pipeline.io import load_torch, save_torch, write_json

UNLABELLED = -1


def generator(*keys: object) -> torch.Generator:
    """A torch generator seeded from a stable hash of `keys` (Python's hash() is salted)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(keys).encode()))


class SplitError(ValueError):
    """A split that does not fit the data: `key` is the setting's field at fault."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def _take_per_class(
    y: torch.Tensor, pool: torch.Tensor, per_class: int, g: torch.Generator, key: str
) -> torch.Tensor:
    chosen = []
    for c in y[pool].unique().tolist():
        members = pool[y[pool] == c]
        if len(members) < per_class:
            raise SplitError(key, f"class {c} has {len(members)} examples, fewer than {per_class}")
        chosen.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(chosen).sort().values


def _split_off(
    pool: torch.Tensor,
    y: torch.Tensor,
    size: int | None,
    per_class: int | None,
    g: torch.Generator,
    key: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve (part, rest) out of `pool`: `size` random examples or `per_class` per class
    (SplitError naming `key`, the field that asked, if the pool has too few)."""
    if per_class is not None:
        part = _take_per_class(y, pool, per_class, g, key)
    else:
        if size is None or size >= len(pool):
            raise SplitError(key, f"cannot carve {size} examples out of {len(pool)}")
        part = pool[torch.randperm(len(pool), generator=g)[:size]].sort().values
    rest = pool[~torch.isin(pool, part)]
    return part, rest


def _other_class(y: torch.Tensor, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """A uniformly drawn class different from y, for each entry."""
    shift = torch.randint(1, num_classes, y.shape, generator=g)
    return (y + shift) % num_classes


def corrupt(
    y: torch.Tensor,
    spec: NoiseSpec,
    num_classes: int,
    g: torch.Generator,
) -> tuple[torch.Tensor, dict]:
    """Return noisy labels and what was realised beyond the labels (background, similar)."""
    info: dict = {}
    if spec.kind not in ("uniform", "flip_similar", "background"):
        return y.clone(), info
    flip = torch.rand(y.shape, generator=g) < spec.rate
    if spec.kind == "uniform":
        target = _other_class(y, num_classes, g)
    elif spec.kind == "flip_similar":
        similar = torch.stack(
            [torch.randperm(num_classes - 1, generator=g)[:2] for _ in range(num_classes)]
        )
        similar = similar + (similar >= torch.arange(num_classes)[:, None]).long()  # skip self
        pick = torch.randint(0, 2, y.shape, generator=g)
        target = similar[y, pick]
        info["similar"] = similar.tolist()
    else:
        background = spec.background
        if background is None:
            background = int(torch.randint(0, num_classes, (1,), generator=g))
        target = torch.full_like(y, background)
        flip &= y != background
        info["background"] = background
    return torch.where(flip, target, y), info


def mask_pairs(
    x: torch.Tensor, y: torch.Tensor, spec: NoiseSpec, mask: int, pad: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The deep-interactions paper's masked noise: each pair is picked with prob. `rate`; in a
    picked pair every source and target token (</s> and padding aside) becomes `mask` with prob.
    `token_rate`. Returns the noisy sources, targets and which pairs were picked."""
    picked = torch.rand(len(y), generator=g) < spec.rate

    def masked(t: torch.Tensor) -> torch.Tensor:
        hit = (torch.rand(t.shape, generator=g) < spec.token_rate) & picked[:, None]
        hit &= (t != pad) & (t != EOS)
        return torch.where(hit, torch.full_like(t, mask), t)

    return masked(x), masked(y), picked


def transition_matrix(clean: torch.Tensor, noisy: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Realised T[i, j] = fraction of training examples of true class i labelled j."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((clean, noisy), torch.ones(len(clean), dtype=torch.float64), accumulate=True)
    return counts / counts.sum(1, keepdim=True).clamp_min(1)


def _trusted(data: RawDataset, spec: NoiseSpec) -> torch.Tensor | None:
    """The rows that a `val_trusted` setting makes the validation split (None: not asked)."""
    if not spec.val_trusted:
        return None
    if data.is_trusted is None or not data.is_trusted.any():
        raise SplitError(
            "val_trusted",
            "the prepared data marks no trusted row (give the dataset a val_path or "
            "trusted_column, then rerun its prepare stage)",
        )
    if (data.is_trusted & data.is_test).any():
        raise SplitError("val_trusted", "a trusted row is in the source's own test split")
    return data.is_trusted


def _carve(data: RawDataset, dspec: DatasetSpec, spec: NoiseSpec, seed: int):
    """The test, validation and training indices, the labels (an imbalance task's mapped to
    0 and 1), the classes kept and their map; SplitError if the data has too few."""
    y = data.y
    everything = torch.arange(len(y))
    trusted = _trusted(data, spec)
    untrusted = everything if trusted is None else everything[~trusted]
    if data.is_test.any():
        test = everything[data.is_test]
        pool = untrusted[~data.is_test[untrusted]]
    elif dspec.test_size is not None:  # the hand-checked rows stay out of the test split
        test, pool = _split_off(
            untrusted, y, dspec.test_size, None, generator(data.name, "test"), "test_size"
        )
    else:
        raise SplitError("test_size", "required (the data has no test split)")

    classes, label_map = list(range(data.num_classes)), None
    if spec.kind == "imbalance":  # a binary task: the first class is the minority
        classes = list(spec.classes)
        label_map = {c: i for i, c in enumerate(classes)}
        test, pool = (s[torch.isin(y[s], torch.tensor(classes))] for s in (test, pool))
        y = y.clone()
        for c, i in label_map.items():
            y[data.y == c] = i

    g = generator(data.name, "split", seed)
    if spec.kind == "few_labels":  # the labelled examples are the validation (MPL section 3.2)
        per_class = spec.labels // len(classes)
        val, train = _split_off(pool, y, None, per_class, g, "labels")
    elif trusted is not None:  # exactly the rows the user checked by hand
        val, train = everything[trusted], pool
    else:
        val_size = spec.val_size if spec.val_per_class is None else None
        key = "val_size" if spec.val_per_class is None else "val_per_class"
        val, train = _split_off(pool, y, val_size, spec.val_per_class, g, key)
    if spec.kind == "imbalance":
        train = _imbalanced(train, y, spec, g)
    elif spec.train_size is not None:  # a random subset of the training split
        if spec.train_size > len(train):
            raise SplitError(
                "train_size", f"{spec.train_size} asked for, {len(train)} left to train on"
            )
        train = train[torch.randperm(len(train), generator=g)[: spec.train_size]].sort().values
    return test, val, train, y, classes, label_map


def make_split(
    data: RawDataset, dspec: DatasetSpec, spec: NoiseSpec, seed: int, where: str = "noise"
) -> dict:
    """Split `data` and corrupt its training labels; see the module docstring. A split that
    does not fit the data is a ParamsError naming the key under `where` (the setting)."""
    try:
        test, val, train, y, classes, label_map = _carve(data, dspec, spec, seed)
    except SplitError as e:
        prefix = f"datasets.{data.name}" if e.key == "test_size" else where
        raise ParamsError(f"{prefix}.{e.key}: {e.reason} in {data.name}") from None
    num_classes = len(classes)
    clean = y[train]
    if y.dim() == 2:  # a translation: masked pairs, no classes to flip
        return _translation_split(data, spec, seed, train, val, test)
    noisy, info = corrupt(clean, spec, num_classes, generator(data.name, "noise", seed))
    if spec.kind == "few_labels":
        noisy = torch.full_like(clean, UNLABELLED)
    mask = noisy != clean
    labelled = noisy != UNLABELLED
    return {
        "dataset": data.name,
        "seed": seed,
        "kind": spec.kind,
        "num_classes": num_classes,
        "class_names": [data.classes[c] for c in classes],
        "label_map": label_map,
        "train_idx": train,
        "val_idx": val,
        "test_idx": test,
        "train_y": noisy,
        "train_y_clean": clean,
        "val_y": y[val],
        "test_y": y[test],
        "noise_mask": mask & labelled,
        "transition": transition_matrix(clean[labelled], noisy[labelled], num_classes),
        "realised_rate": float(mask[labelled].double().mean()) if labelled.any() else 0.0,
        **info,
    }


def _translation_split(data: RawDataset, spec: NoiseSpec, seed: int, train, val, test) -> dict:
    """A translation's split: its training pairs masked (kind mask) or left clean (none)."""
    x, y = data.x[train], data.y[train]
    picked = torch.zeros(len(train), dtype=torch.bool)
    if spec.kind == "mask":
        mask = data.classes.index(MASK)
        g = generator(data.name, "noise", seed)
        x, noisy, picked = mask_pairs(x, y, spec, mask, PAD, g)
    else:
        noisy = y.clone()
    tokens = (data.y[train] != PAD) & (data.y[train] != EOS)
    changed = (noisy != data.y[train]) & tokens
    return {
        "dataset": data.name,
        "seed": seed,
        "kind": spec.kind,
        "num_classes": data.num_classes,
        "class_names": list(data.classes),
        "label_map": None,
        "train_idx": train,
        "val_idx": val,
        "test_idx": test,
        "train_x": x,  # the sources as training sees them (masked)
        "train_y": noisy,
        "train_y_clean": data.y[train],
        "val_y": data.y[val],
        "test_y": data.y[test],
        "noise_mask": picked,
        "transition": torch.zeros(0, 0, dtype=torch.float64),
        "realised_rate": float(picked.double().mean()),
        # the fraction of the picked pairs' target tokens masked
        "realised_token_rate": float(changed[picked].sum() / tokens[picked].sum().clamp_min(1)),
    }


def _imbalanced(
    pool: torch.Tensor, y: torch.Tensor, spec: NoiseSpec, g: torch.Generator
) -> torch.Tensor:
    n_major = round(spec.majority_fraction * spec.train_size)
    parts = []
    for label, n in ((0, spec.train_size - n_major), (1, n_major)):
        members = pool[y[pool] == label]
        if len(members) < n:
            raise SplitError(
                "train_size",
                f"class {spec.classes[label]} has {len(members)} training examples, fewer "
                f"than the {n} asked for",
            )
        parts.append(members[torch.randperm(len(members), generator=g)[:n]])
    return torch.cat(parts).sort().values


def summary(split: dict) -> dict:
    """The JSON-able part of a split: sizes, realised rate and transition matrix."""
    return {
        "dataset": split["dataset"],
        "seed": split["seed"],
        "kind": split["kind"],
        "num_classes": split["num_classes"],
        # a translation's vocabulary is in the prepared dataset, not repeated per split
        **({"class_names": split["class_names"]} if "train_x" not in split else {}),
        "sizes": {k: len(split[f"{k}_idx"]) for k in ("train", "val", "test")},
        "labelled_train": int(
            (split["train_y"].reshape(len(split["train_y"]), -1) != UNLABELLED).all(1).sum()
        ),
        "realised_rate": round(split["realised_rate"], 6),
        "transition": [[round(v, 6) for v in row] for row in split["transition"].tolist()],
        **{k: split[k] for k in ("background", "similar", "label_map") if split.get(k)},
        **{k: round(split[k], 6) for k in ("realised_token_rate",) if k in split},
    }


def write_splits(p: Params, dataset: str, noise: str, seeds) -> list[dict]:
    """The noise stage: each seed's split of the prepared dataset and its summary. The setting
    is checked against the dataset first (params.yaml checks only the pairs its experiments
    name, and a user's data only once prepared), so a mistake names its key."""
    where, spec, dspec = f"noise.{noise}", p.noise[noise], p.datasets[dataset]
    used_by = f"--dataset {dataset}"
    spec.check_fits(where, dspec, used_by)
    data = RawDataset.from_dict(
        load_torch(plan.prepared_path(dataset), True, plan.remake_prepared(dataset))
    )
    task = "translation" if data.y.dim() == 2 else "classification"
    test = int(data.is_test.sum()) or dspec.test_size or 0
    spec.check_counts(where, task, data.num_classes, len(data.y) - test, dspec.source, used_by)
    infos = []
    for seed in seeds:
        split = make_split(data, dspec, spec, seed, where)
        save_torch(split, plan.split_path(dataset, noise, seed), checksum=True)
        infos.append(summary(split))
        write_json(infos[-1], plan.split_summary_path(dataset, noise, seed))
    return infos
