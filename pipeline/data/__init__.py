"""Datasets: raw loaders (one function per source) and the in-memory form every stage shares."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RawDataset:
    """A whole labelled dataset in memory, as the prepare stage stores it.

    x: uint8 images [N, C, H, W], float32 features [N, D] (two moons), or int64 token ids
        [N, L] padded with 0 (text) or with <pad> (a translation's source sentences).
    y: int64 class indices [N], or a translation's target token ids [N, L] (its vocabulary is
        `classes`; pipeline/data/translation_sources.py).
    is_test: bool [N], True for the source's official test split (all False when it has none;
        the noise stage then carves a test split from a seed).
    ids: the user's example ids (a table's `id_column`), carried into examples.csv.
    is_trusted: bool [N], the rows the user checked by hand (a table's `val_path` file or
        `trusted_column`, an image folder's `val_path`): a noise setting with `val_trusted`
        makes exactly these the clean validation split (None: the source marks none).
    references: a translation's target sentences as text (what BLEU is scored against).
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    is_test: torch.Tensor
    classes: list[str]
    ids: list[str] | None = None
    references: list[str] | None = None
    is_trusted: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.y)
        if len(self.x) != n or len(self.is_test) != n or len(self.ids or self.y) != n:
            raise ValueError(f"{self.name}: x, y, is_test and ids differ in length")
        if self.references is not None and len(self.references) != n:
            raise ValueError(f"{self.name}: {len(self.references)} references for {n} pairs")
        if self.y.dtype != torch.int64 or self.is_test.dtype != torch.bool:
            raise ValueError(f"{self.name}: y must be int64 and is_test bool")
        if self.is_trusted is not None and (
            self.is_trusted.dtype != torch.bool or len(self.is_trusted) != n
        ):
            raise ValueError(f"{self.name}: is_trusted must be bool, one entry per example")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "x": self.x,
            "y": self.y,
            "is_test": self.is_test,
            "classes": list(self.classes),
            **({"ids": list(self.ids)} if self.ids is not None else {}),
            **({"references": list(self.references)} if self.references is not None else {}),
            **({"is_trusted": self.is_trusted} if self.is_trusted is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RawDataset:
        return cls(
            d["name"],
            d["x"],
            d["y"],
            d["is_test"],
            list(d["classes"]),
            d.get("ids"),
            d.get("references"),
            d.get("is_trusted"),
        )
