"""A run's data, resident on its device: the prepared dataset cut by the noise stage's split.

Images become float tensors normalised with the training split's per-channel mean and std, once
(token ids stay int64; a translation's targets are token ids in y), so the training loop only
indexes tensors (no DataLoader, no per-step host-device copies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline import plan
from pipeline.io import load_torch


@dataclass
class TaskData:
    train_x: torch.Tensor
    train_y: torch.Tensor  # observed (possibly noisy) labels; -1 marks unlabelled examples
    train_y_clean: torch.Tensor  # the true labels, for analysis only (never trained on)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    class_names: list[str]
    # each training example's position in the prepared dataset (a table's row), and the
    # user's example ids where the source has them (both for examples.csv)
    train_rows: torch.Tensor | None = None
    ids: list[str] | None = None
    kind: str = "classification"  # a name of pipeline/task_kinds.py KINDS
    masked_pairs: torch.Tensor | None = None  # a translation's: the pairs the noise picked
    # a translation's reference sentences (what BLEU is scored against)
    val_references: list[str] | None = None
    test_references: list[str] | None = None
    # the training split's input statistics (standardiser), None for token ids
    input_stats: dict[str, torch.Tensor] | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def labelled(self) -> torch.Tensor:
        """Which training examples have a label (a translation's pairs all have one)."""
        return (self.train_y.reshape(len(self.train_y), -1) >= 0).all(1)

    @property
    def noise_mask(self) -> torch.Tensor:
        """Which labelled examples the noise stage corrupted (a translation: whose pair it
        masked, source or target)."""
        if self.masked_pairs is not None:
            return self.masked_pairs
        return (self.train_y != self.train_y_clean) & self.labelled


def _to_float(t: torch.Tensor) -> torch.Tensor:
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


def standardiser(reference: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The training split's mean and scale per channel (per feature for vectors), after
    uint8 images are scaled to [0, 1]; None for token ids (int64), which pass through. Stored
    in each run's model.pt (`inputs`), so the model can be applied to new rows."""
    if reference.dtype == torch.int64:
        return None
    ref = _to_float(reference)
    dims = [0, 2, 3] if ref.dim() == 4 else [0]
    mean, std = ref.mean(dims, keepdim=True), ref.std(dims, keepdim=True)
    # a feature (nearly) constant in the training split is centred, not scaled: divided by
    # its tiny spread, a validation or test value that differs would become ~1e6 (as
    # scikit-learn's StandardScaler, which leaves such features' scale at 1)
    constant = std <= 1e-6 * (1 + mean.abs())
    return {"mean": mean, "scale": torch.where(constant, torch.ones_like(std), std)}


def standardise(x: torch.Tensor, stats: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Inputs as the model was trained on them (`stats`: standardiser's)."""
    return x if stats is None else (_to_float(x) - stats["mean"]) / stats["scale"]


def normalise(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`x` standardised with the statistics of `reference` (the training split)."""
    return standardise(x, standardiser(reference))


def load_task(
    dataset: str,
    noise: str,
    seed: int,
    device: str | torch.device = "cpu",
) -> TaskData:
    raw = load_torch(plan.prepared_path(dataset), True, plan.remake_prepared(dataset))
    split = load_torch(
        plan.split_path(dataset, noise, seed), True, plan.remake_split(dataset, noise, seed)
    )
    x = raw["x"]
    stats = standardiser(x[split["train_idx"]])
    parts = {
        k: standardise(x[split[f"{k}_idx"]], stats).to(device) for k in ("train", "val", "test")
    }
    if "train_x" in split:  # inputs the noise stage changed (a translation's masked sources)
        parts["train"] = split["train_x"].to(device)
    references = raw.get("references")
    if references is not None:
        refs = {k: [references[i] for i in split[f"{k}_idx"].tolist()] for k in ("val", "test")}
    return TaskData(
        train_x=parts["train"],
        train_y=split["train_y"].to(device),
        train_y_clean=split["train_y_clean"].to(device),
        val_x=parts["val"],
        val_y=split["val_y"].to(device),
        test_x=parts["test"],
        test_y=split["test_y"].to(device),
        num_classes=split["num_classes"],
        class_names=split["class_names"],
        train_rows=split["train_idx"],
        ids=raw.get("ids"),
        kind="translation" if raw["y"].dim() == 2 else "classification",
        masked_pairs=split["noise_mask"].to(device) if "train_x" in split else None,
        val_references=refs["val"] if references is not None else None,
        test_references=refs["test"] if references is not None else None,
        input_stats=stats,
    )
