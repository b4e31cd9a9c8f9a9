"""A collapsed run is named: the rule on a history, the table's mark and its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.collapse import collapse


def history(scores: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "val_acc": s} for i, s in enumerate(scores)]


@pytest.mark.parametrize(
    "scores, found",
    [
        (
            [0.3, 0.8, 0.9, 0.12, 0.11, 0.12, 0.1],
            {"epoch": 4, "epochs": 3, "best": 0.9, "low": 0.1},
        ),
        ([0.3, 0.8, 0.9, 0.12, 0.11, 0.9, 0.1], None),  # two epochs down, then back
        ([0.3, 0.8, 0.9, 0.6, 0.6, 0.6, 0.6], None),  # lower, but above halfway to chance
        ([0.1, 0.1, 0.1, 0.1], None),  # never learned: nothing to fall from
    ],
)
def test_a_stretch_below_halfway_to_chance_after_the_best_is_a_collapse(scores, found):
    assert collapse(history(scores), "val_acc", chance=0.1) == found


def test_a_long_run_needs_a_tenth_of_its_epochs_down():
    scores = [0.9] * 40 + [0.1] * 3 + [0.9] * 7
    assert collapse(history(scores), "val_acc", 0.1) is None  # 3 of 50 epochs: a dip
    assert collapse(history([0.9] * 40 + [0.1] * 5 + [0.9] * 5), "val_acc", 0.1)["epochs"] == 5


def test_the_table_marks_a_collapsed_seed(workdir, tiny_raw):
    """A run's history that collapsed (written over a trained run's) gets ‡ in its cell and a
    line under the table naming the seed."""
    import yaml

    from pipeline.__main__ import main
    from pipeline.plan import runs

    tiny_raw["experiments"]["tiny"]["noise"] = ["clean"]
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    assert main(["prepare", "--dataset", "digits"]) == 0
    assert main(["noise", "--dataset", "digits", "--noise", "clean", "--seeds", "0,1"]) == 0
    cell = ["--dataset", "digits", "--model", "mlp", "--schedule", "short", "--noise", "clean"]
    assert main(["train", *cell, "--method", "erm", "--seeds", "0,1"]) == 0
    from pipeline.config import load

    both = runs(load("params.yaml"), "tiny")
    run = [r for r in both if r.seed == 1][0]
    Path(run.file("history.json")).write_text(json.dumps(history([0.9, 0.1, 0.1, 0.1])))
    assert main(["report", "--experiment", "tiny"]) == 0
    table = Path("results/tables/tiny.md").read_text()
    assert "| erm | " in table and " ‡ |" in table
    assert "- erm, clean: seed 1: val_acc fell from its best 0.9 to 0.1" in table
    # re-scored, the collapsed seed says so in its metrics; the other seed has no such key
    assert main(["evaluate", *cell, "--method", "erm", "--seed", "1"]) == 0
    assert main(["evaluate", *cell, "--method", "erm", "--seed", "0"]) == 0
    metrics = {r.seed: json.loads(Path(r.file("metrics.json")).read_text()) for r in both}
    assert metrics[1]["collapsed"].startswith("val_acc fell from its best 0.9 to 0.1")
    assert "collapsed" not in metrics[0]
