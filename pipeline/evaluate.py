"""The evaluate stage: score a trained run on the test split (only here is it ever used)."""

from __future__ import annotations

import dataclasses
import platform

import torch

from pipeline import plan
from pipeline.config import Params
from pipeline.core.student import predict
from pipeline.io import git_revision, load_torch, write_json
from pipeline.models import build_model
from pipeline.task import load_task
from pipeline.train import pick_device


def classification_metrics(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """Accuracy, error and macro F1 (classes absent from both y and pred are skipped), in %."""
    acc = float((pred == y).double().mean())
    f1s = []
    for c in range(num_classes):
        tp = float(((pred == c) & (y == c)).sum())
        support, predicted = float((y == c).sum()), float((pred == c).sum())
        if support + predicted:
            f1s.append(2 * tp / (support + predicted))
    return {
        "accuracy": round(100 * acc, 4),
        "error": round(100 * (1 - acc), 4),
        "macro_f1": round(100 * sum(f1s) / len(f1s), 4),
    }


def settings_of(p: Params, experiment: str, noise: str, method: str) -> dict:
    """The resolved settings of a run, saved beside its results."""
    exp = p.experiments[experiment]
    asdict = dataclasses.asdict
    return {
        "dataset": {exp.dataset: asdict(p.datasets[exp.dataset])},
        "noise": {noise: asdict(p.noise[noise])},
        "model": {exp.model: asdict(p.models[exp.model])},
        "schedule": {exp.schedule: asdict(p.schedules[exp.schedule])},
        "method": {method: {"method": p.method_kind(method), **asdict(p.methods[method])}},
    }


def evaluate(p: Params, experiment: str, noise: str, method: str, seed: int) -> dict:
    exp = p.experiments[experiment]
    device = pick_device(p.run.device)
    if device.type == "cpu":
        torch.set_num_threads(p.run.threads)
    data = load_task(exp.dataset, noise, seed, device)
    run = plan.run_dir(experiment, noise, method, seed)
    spec = p.models[exp.model]
    model = build_model(spec.arch, data.in_shape, data.num_classes, **spec.options).to(device)
    saved = load_torch(f"{run}/model.pt")

    def score(state: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
        model.load_state_dict(state)
        return classification_metrics(predict(model, x).argmax(1), y, data.num_classes)

    best = score(saved["best_val"]["model"], data.test_x, data.test_y)
    val = score(saved["model"], data.val_x, data.val_y)
    test = score(saved["model"], data.test_x, data.test_y)
    metrics = {
        "experiment": experiment,
        "noise": noise,
        "method": method,
        "seed": seed,
        # "test": the final model; "test_best_val": the epoch best on the clean validation
        # split (early stopping, the papers' "+ES"), before any fine-tuning.
        "test": test,
        "test_best_val": best,
        "best_epoch": saved["best_val"]["epoch"],
        "val_accuracy": val["accuracy"],
        "sizes": {"train": len(data.train_y), "val": len(data.val_y), "test": len(data.test_y)},
        "settings": settings_of(p, experiment, noise, method),
        "provenance": {
            "git": git_revision(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": device.type,
        },
    }
    write_json(metrics, f"{run}/metrics.json")
    return metrics
