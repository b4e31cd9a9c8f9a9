"""The evaluate stage: score a trained run on the test split (only here is it ever used)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform

import torch

from pipeline import numerics, plan
from pipeline.collapse import how_collapsed
from pipeline.config import Params
from pipeline.examples import (
    ExampleWeights,
    detection,
    example_table,
    write_examples,
    write_top_images,
)
from pipeline.io import (
    committed_json,
    dumps_json,
    git_revision,
    load_torch,
    read_json,
    write_json,
)
from pipeline.models import build_model
from pipeline.plan import Run
from pipeline.task import TaskData, load_task
from pipeline.task_kinds import classification_metrics, task_kind  # noqa: F401 (re-exported)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes: the trained weights' bits in
    metrics.json, which `verify` compares (its figures are rounded)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def weight_histogram(sample: dict, edges: tuple = (0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6)) -> dict:
    """Counts of example weights (times the batch size; 1 = uniform) of clean and corrupted
    training examples, from the batches a reweighting method kept (see L2RW.record)."""
    w = torch.cat(sample["weights"]).double()
    noisy = torch.cat(sample["noisy"])
    bounds = torch.tensor([*edges, float("inf")], dtype=torch.float64)
    index = torch.bucketize(w, bounds, right=True) - 1
    counts = {
        name: torch.bincount(index[mask], minlength=len(edges)).tolist()
        for name, mask in (("clean", ~noisy), ("noisy", noisy))
    }
    return {"edges": list(edges), **counts}


def weight_points(sample: dict, count: int = 100) -> dict:
    """The first `count` sampled examples' training loss, weight (times the batch size) and
    observed label: the points of the weight-against-loss figure (DIR Figure 2)."""
    keys = {"loss": "losses", "weight": "weights", "label": "labels"}
    points = {k: torch.cat(sample[v])[:count].tolist() for k, v in keys.items()}
    points["loss"] = [round(v, 4) for v in points["loss"]]
    points["weight"] = [round(v, 4) for v in points["weight"]]
    return points


def settings_of(p: Params, run: Run) -> dict:
    """The resolved settings of a run, saved beside its results."""
    asdict = dataclasses.asdict
    return {
        "dataset": {run.dataset: asdict(p.datasets[run.dataset])},
        "noise": {run.noise: asdict(p.noise[run.noise])},
        "model": {run.model: asdict(p.models[run.model])},
        "schedule": {run.schedule: asdict(p.schedules[run.schedule])},
        "method": {
            run.method: {"method": p.method_kind(run.method), **asdict(p.methods[run.method])}
        },
    }


def write_example_records(
    model, task, saved: dict, data: TaskData, run: Run, metrics: dict
) -> None:
    """examples.csv and suspects.npy (pipeline/examples.py) and, where labels were corrupted,
    how well the ranking finds them (metrics["detection"])."""
    weights = None
    if saved.get("example_weights") is not None:
        weights = ExampleWeights(len(data.train_y))
        weights.load_state_dict(saved["example_weights"])
    best = (saved["best_val"] or {}).get("model") or saved["model"]
    table = example_table(model, task, saved["model"], best, data, weights)
    write_examples(table, run.file("examples.csv"))
    images = None
    if data.train_x.dim() == 4 and data.train_rows is not None:  # the raw pixels, not the
        path = plan.prepared_path(run.dataset)  # normalised ones the task holds
        images = load_torch(path, True, plan.remake_prepared(run.dataset))["x"]
    write_top_images(table, images, run.file("suspects.npy"))
    found = detection(table)
    if found is not None:
        metrics["detection"] = found


def scores_teacher(p: Params, run: Run) -> bool:
    """Whether the run's method learns a teacher of the student's architecture that the
    evaluate stage scores too (the method class's `scores_teacher`)."""
    from pipeline.methods.registry import METHODS

    return METHODS[p.method_kind(run.method)].scores_teacher


def evaluate(p: Params, run: Run, data: TaskData | None = None) -> dict:
    """Score a run's saved model on the test split (`data`: the run's task, when loaded)."""
    device = numerics.pick_device(p.run.device)
    if device.type == "cpu":
        numerics.configure(p.run.threads)
    data = data or load_task(run.dataset, run.noise, run.seed, device)
    spec = p.models[run.model]
    model = build_model(spec.arch, data.in_shape, data.num_classes, **spec.options).to(device)
    saved = load_torch(run.file("model.pt"))
    task = task_kind(data, p.schedules[run.schedule].label_smoothing)

    def score(state: dict, split: str) -> dict:
        model.load_state_dict(state)
        return task.scores(model, data, split)

    val = score(saved["model"], "val")
    test = score(saved["model"], "test")
    metrics = {
        **dataclasses.asdict(run),
        # "test": the final model; "test_best_val": the epoch best on the clean validation
        # split (early stopping, the papers' "+ES"), before any fine-tuning.
        "test": test,
        f"val_{task.headline}": val[task.headline],
        "sizes": {"train": len(data.train_y), "val": len(data.val_y), "test": len(data.test_y)},
        "model_sha256": state_digest(saved["model"]),
        "settings": settings_of(p, run),
        "provenance": {
            "git": git_revision(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": device.type,
            **numerics.provenance(),
        },
    }
    best = saved["best_val"]  # absent after fine-tuning, which follows the last epoch
    if best:  # its weights are absent when the last epoch was the best
        best_model = best["model"]
        metrics["test_best_val"] = test if best_model is None else score(best_model, "test")
        metrics["best_epoch"] = best["epoch"]
    if saved["method"].get("metrics"):  # what a teacher recorded (e.g. DLF's history)
        metrics["teacher"] = saved["method"]["metrics"]
    write_example_records(model, task, saved, data, run, metrics)
    if scores_teacher(p, run):  # last: it loads the teacher's weights into `model`
        teacher = saved["method"]["teacher"]
        metrics["teacher_test"] = score(teacher, "test")
        metrics[f"teacher_val_{task.headline}"] = score(teacher, "val")[task.headline]
    sample = saved["method"].get("weight_sample")
    if sample and sample["weights"]:
        metrics["weight_histogram"] = weight_histogram(sample)
        if sample.get("losses"):
            metrics["weight_points"] = weight_points(sample)
    if os.path.exists(run.file("history.json")):  # a run that fell to chance says so
        history = read_json(run.file("history.json"))
        collapsed = how_collapsed(history, task.validation_key, data.num_classes)
        if collapsed:
            metrics["collapsed"] = collapsed
    metrics = with_committed_revision(metrics, run.file("metrics.json"))
    write_json(metrics, run.file("metrics.json"))
    return metrics


def with_committed_revision(metrics: dict, path: str) -> dict:
    """`metrics` with the git revision of the committed file at `path` where that file says
    the same in everything else: the revision then names the commit that first made these
    exact figures, and a rerun that reproduces a committed result leaves it byte for byte (a
    fresh clone stays clean after the workflow). Any other difference keeps this revision."""
    committed = committed_json(path)
    if not isinstance(committed, dict) or not isinstance(committed.get("provenance"), dict):
        return metrics
    kept = {
        **metrics,
        "provenance": {**metrics["provenance"], "git": committed["provenance"].get("git")},
    }
    return kept if json.loads(dumps_json(kept)) == committed else metrics
