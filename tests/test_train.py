"""Training: ERM learns, a killed run resumes to the same result, evaluation uses the test split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline import plan
from pipeline.__main__ import main
from pipeline.config import load
from pipeline.io import load_torch, read_json
from pipeline.train import train


@pytest.fixture
def prepared(workdir):
    assert main(["prepare", "--dataset", "digits"]) == 0
    for noise in ("clean", "uniform40"):
        assert main(["noise", "--dataset", "digits", "--noise", noise, "--seed", "0"]) == 0
    return load("params.yaml")


def model_state(run_dir: Path) -> dict:
    return load_torch(run_dir / "model.pt")["model"]


def test_interrupted_run_resumes_to_the_same_weights(prepared, tmp_path):
    p = prepared
    run = Path(plan.run_dir("tiny", "uniform40", "erm", 0))
    ckpt = Path(plan.checkpoint_path("tiny", "uniform40", "erm", 0))
    train(p, "tiny", "uniform40", "erm", 0)
    reference, history = model_state(run), (run / "history.json").read_text()
    assert not ckpt.exists()  # removed once the outputs are written

    (run / "model.pt").unlink()
    train(p, "tiny", "uniform40", "erm", 0, stop_after_epoch=1)  # "killed" after epoch 1
    assert ckpt.exists() and not (run / "model.pt").exists()
    assert load_torch(ckpt)["epoch"] == 1
    train(p, "tiny", "uniform40", "erm", 0)  # resumes at epoch 2
    resumed = model_state(run)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert (run / "history.json").read_text() == history


def test_erm_learns_and_is_scored_on_test(prepared):
    assert (
        main(
            ["train", "--experiment", "tiny", "--noise", "clean", "--method", "erm", "--seed", "0"]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--experiment",
                "tiny",
                "--noise",
                "clean",
                "--method",
                "erm",
                "--seed",
                "0",
            ]
        )
        == 0
    )
    m = read_json(Path(plan.run_dir("tiny", "clean", "erm", 0)) / "metrics.json")
    assert m["sizes"]["test"] == 297 and m["test"]["accuracy"] > 85
    assert m["test"]["error"] == pytest.approx(100 - m["test"]["accuracy"])
    assert m["settings"]["noise"]["clean"]["kind"] == "none" and m["seed"] == 0
    assert m["provenance"]["git"]
    history = read_json(Path(plan.run_dir("tiny", "clean", "erm", 0)) / "history.json")
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["loss"] < history[0]["loss"]


def test_unknown_name_on_the_command_line(prepared, capsys):
    assert (
        main(
            [
                "train",
                "--experiment",
                "tiny",
                "--noise",
                "uniform45",
                "--method",
                "erm",
                "--seed",
                "0",
            ]
        )
        == 2
    )
    assert "--noise uniform45" in capsys.readouterr().err
