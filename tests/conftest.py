"""Shared fixtures: a tiny but complete params set on scikit-learn's digits, and a scratch
working directory laid out like the repository (the stages use paths relative to it)."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

TINY = {
    "profile": "default",
    "profiles": {
        "default": {"seeds": [0, 1], "experiments": ["tiny"]},
        "other": {"seeds": [0], "experiments": ["tiny"]},
    },
    "run": {"device": "cpu", "threads": 1},
    "datasets": {"digits": {"source": "sklearn_digits", "test_size": 297}},
    "noise": {
        "clean": {"kind": "none", "val_size": 100},
        "uniform40": {"kind": "uniform", "rate": 0.4, "val_size": 100},
    },
    "models": {"mlp": {"arch": "mlp", "hidden": [32]}},
    "schedules": {
        "short": {"epochs": 2, "batch_size": 50, "lr": 0.1, "momentum": 0.9, "milestones": [0.5]}
    },
    "methods": {"erm": {}},
    "experiments": {
        "tiny": {
            "title": "tiny",
            "dataset": "digits",
            "model": "mlp",
            "schedule": "short",
            "noise": ["clean", "uniform40"],
            "methods": ["erm"],
            "figure": "rate",
        },
    },
}


@pytest.fixture
def tiny_raw() -> dict:
    return copy.deepcopy(TINY)


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_raw) -> Path:
    """A scratch repository copy (workflow files and tiny params.yaml), as the cwd."""
    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(
        REPO / "workflow", tmp_path / "workflow", ignore=shutil.ignore_patterns("profiles")
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    return tmp_path
