"""Tables and figures: the statistics, the layout beside the papers' numbers, determinism."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from pipeline.config import parse
from pipeline.evaluate import classification_metrics, weight_histogram
from pipeline.report import markdown, mean_ci95, summarise


def test_mean_ci95_uses_student_t():
    mean, ci = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(4.302653 * 1.0 / 3**0.5, rel=1e-6)
    assert mean_ci95([5.0]) == (5.0, 0.0)


def test_classification_metrics():
    y = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])
    m = classification_metrics(pred, y, 3)
    assert m["accuracy"] == 60.0 and m["error"] == 40.0
    # F1: class 0: 2*1/(2+2)=0.5, class 1: 2*2/(2+3)=0.8, class 2: 0 -> mean 0.4333
    assert m["macro_f1"] == pytest.approx(43.3333, abs=1e-3)


def test_markdown_puts_papers_beside_ours(tiny_raw):
    tiny_raw["experiments"]["tiny"].update(
        early_stopping=True, reported=["l2rw_t1_cifar10"], methods=["erm"]
    )
    p = parse(tiny_raw)
    runs = pd.DataFrame(
        [
            {"noise": n, "method": m, "seed": s, "accuracy": acc}
            for n in ("clean", "uniform40")
            for s, acc in ((0, 90.0), (1, 92.0))
            for m in ("erm", "erm +ES")
        ]
    )
    text = markdown(p, "tiny", summarise(runs))
    lines = text.splitlines()
    assert "| method | clean | uniform40 | paper [1] |" in lines
    assert "| erm | 91.00 ± 12.71 | 91.00 ± 12.71 | 67.97 ± 0.62 |" in lines
    assert "| erm +ES | 91.00 ± 12.71 | 91.00 ± 12.71 | — |" in lines
    assert "| MentorNet (reported) | — | — | 76.6 |" in lines
    assert lines[-1].startswith("[1] Ren et al. 2018 Table 1")


def test_weight_histogram_counts_by_label_quality():
    sample = {
        "weights": [torch.tensor([0.0, 0.1, 1.2, 5.0]), torch.tensor([7.0, 0.3])],
        "noisy": [torch.tensor([True, True, False, False]), torch.tensor([False, True])],
    }
    h = weight_histogram(sample)
    assert h["edges"][0] == 0 and len(h["clean"]) == len(h["edges"])
    assert sum(h["clean"]) == 3 and sum(h["noisy"]) == 3
    assert h["noisy"][0] == 2 and h["noisy"][1] == 1  # 0.0, 0.1 in [0, .25); 0.3 in [.25, .5)
    assert h["clean"][-1] == 1 and h["clean"][-2] == 1  # 7.0 >= 6; 5.0 in [4, 6)
