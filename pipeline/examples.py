"""What a run says about each training example: `examples.csv` beside its metrics.

A reweighting method (L2RW, Meta-Weight-Net, DIR) reports the weight it gives each example at
every step it sees it (`ExampleWeights`); after training, every run writes one row per labelled
training example: its given label, the final student's prediction and its probability (labels
by class name), its loss on the given label under the final and the best-on-validation model,
the mean and last weight the teacher gave it, whether the noise stage corrupted its label, and
its suspicion rank (1: most likely mislabelled). The rank comes from the mean weight where the
method weighted examples (lowest first), otherwise from the loss under the best-on-validation
model (largest first: the common small-loss criterion, at the epoch chosen on the clean
validation split, before a baseline has memorised the noise; after fine-tuning, which has no
such epoch, the final model's). Equal scores (e.g. many weights of exactly 0) are ordered by
the larger final loss. Where labels were corrupted, how well the ranking finds them goes into
metrics.json (pipeline/detection.py).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from pipeline import plan
from pipeline.detection import ranking_quality
from pipeline.io import write_bytes, write_text
from pipeline.task import TaskData


class ExampleWeights:
    """Running sum, count and last value of each training example's weight (on the method's
    scale: a batch-normalised weight times the batch size, so 1 is uniform, or MW-Net's
    sigmoid), indexed by its position in the training split; kept on the training device, so
    recording costs no host synchronisation."""

    def __init__(self, size: int, device: str | torch.device = "cpu"):
        self.total = torch.zeros(size, dtype=torch.float64, device=device)
        self.count = torch.zeros(size, dtype=torch.int64, device=device)
        self.last = torch.full((size,), float("nan"), dtype=torch.float64, device=device)

    def add(self, index: torch.Tensor, weights: torch.Tensor) -> None:
        index, w = index.to(self.total.device), weights.detach().double().to(self.total.device)
        self.total.index_add_(0, index, w)
        self.count.index_add_(0, index, torch.ones_like(index))
        self.last[index] = w

    @property
    def recorded(self) -> bool:
        return bool(self.count.any())

    def mean(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.total / self.count.clamp_min(1), float("nan"))

    def state_dict(self) -> dict:
        return {"total": self.total.cpu(), "count": self.count.cpu(), "last": self.last.cpu()}

    def load_state_dict(self, state: dict) -> None:
        device = self.total.device
        self.total, self.count, self.last = (
            state[k].to(device) for k in ("total", "count", "last")
        )


def example_table(
    model: torch.nn.Module,
    task,
    final: dict,
    best: dict,
    data: TaskData,
    weights: ExampleWeights | None,
) -> dict[str, np.ndarray]:
    """The columns of examples.csv for the labelled training examples, in split order.
    `final` and `best` are the state dicts of the final and best-on-validation models."""
    labelled = data.labelled.cpu()
    model.load_state_dict(best)
    loss_best = task.example_columns(model, data)["loss"]
    model.load_state_dict(final)  # the model is left at its final state
    given = task.example_columns(model, data)
    names = {k: np.asarray(given.pop(k), dtype=object) for k in ("label", "pred")}
    columns = {
        "index": torch.arange(len(labelled)),
        "row": data.train_rows if data.train_rows is not None else torch.arange(len(labelled)),
        **given,
        "loss_best_val": loss_best,
        "corrupted": data.noise_mask.long(),
    }
    if weights is not None and weights.recorded:
        columns["weight_mean"] = weights.mean()
        columns["weight_last"] = weights.last
        score = -columns["weight_mean"].nan_to_num(float("inf"))  # never weighted: last
    else:
        score = loss_best
    table = {k: v.detach().cpu().numpy()[labelled.numpy()] for k, v in columns.items()}
    table.update({k: v[labelled.numpy()] for k, v in names.items()})  # as the user gave them
    if data.ids is not None:
        table["id"] = np.asarray(data.ids, dtype=object)[table["row"]]
    score = score.detach().cpu().double().numpy()[labelled.numpy()]
    # most suspect first; ties (e.g. weights all 0) by the larger final loss, then the index
    order = np.lexsort((table["index"], -table["loss"], -score))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    table["rank"] = rank
    return table


COLUMNS = ("index", "row", "id", "label", "pred", "prob", "loss", "loss_best_val",
           "weight_mean", "weight_last", "corrupted", "rank")  # fmt: skip


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.6g}"
    return str(value)


def write_examples(table: dict[str, np.ndarray], path: str | Path) -> None:
    """examples.csv, rows in suspicion order; the columns a run has, in COLUMNS order."""
    names = [c for c in COLUMNS if c in table]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for i in np.argsort(table["rank"]):
        writer.writerow([_cell(table[c][i]) for c in names])
    write_text(out.getvalue(), path)


def write_top_images(
    table: dict[str, np.ndarray], raw_x: torch.Tensor | None, path: str | Path
) -> None:
    """suspects.npy: the images of the run's top suspects (plan.SUSPECT_IMAGES), uint8
    [k, H, W, C] in rank order, from the prepared dataset (empty where the data are not
    images), so that a contact sheet needs neither the prepared data nor torch."""
    if raw_x is not None and raw_x.dtype == torch.uint8 and raw_x.dim() == 4:
        rows = table["row"][np.argsort(table["rank"])[: plan.SUSPECT_IMAGES]]
        images = raw_x[torch.from_numpy(rows)].permute(0, 2, 3, 1).contiguous().numpy()
    else:
        images = np.zeros((0,), np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    write_bytes(buffer.getvalue(), path)


def detection(table: dict[str, np.ndarray]) -> dict | None:
    """How well the run's ranking finds the corrupted labels (None where none was)."""
    noisy = table["corrupted"].astype(bool)
    if not noisy.any() or noisy.all():
        return None
    by_rank = noisy[np.argsort(table["rank"])]
    score = "weight_mean" if "weight_mean" in table else "loss_best_val"
    return {"score": score, **ranking_quality(by_rank)}
