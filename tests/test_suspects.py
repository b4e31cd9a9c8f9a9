"""Suspect labels out: every run's examples.csv, the detection figures of its ranking against
the realised noise, and the suspects stage's tables and figure."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline import plan
from pipeline.__main__ import main
from pipeline.config import ParamsError, load, parse
from pipeline.detection import ranking_quality
from pipeline.examples import ExampleWeights
from pipeline.io import load_torch, read_json
from pipeline.suspects import suspects
from pipeline.train import train

REPO = Path(__file__).resolve().parent.parent
RUN = plan.Run("digits", "mlp", "short", "uniform40", "l2rw", 0)


def test_ranking_quality_agrees_with_scikit_learn_and_counts_by_hand():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    noisy = rng.random(300) < 0.3
    score = noisy * 0.8 + rng.random(300)  # suspicion: corrupted labels tend higher
    by_rank = noisy[np.argsort(-score, kind="stable")]
    found = ranking_quality(by_rank)
    k = int(noisy.sum())
    assert found["auc"] == pytest.approx(roc_auc_score(noisy, score), abs=1e-6)
    assert found["precision_at_k"] == pytest.approx(by_rank[:k].sum() / k, abs=1e-6)
    assert found["recall_at_k"] == found["precision_at_k"]  # equal at depth K
    assert found["recall_at_twice"] == pytest.approx(by_rank[: 2 * k].sum() / k, abs=1e-6)
    assert found["curve"]["depth"][0] == 1 and found["curve"]["depth"][-1] == 300
    assert found["curve"]["recall"][-1] == 1.0


def test_a_perfect_ranking_scores_one_and_a_reversed_one_zero():
    perfect = ranking_quality(np.array([True, True, False, False, False]))
    assert perfect["auc"] == 1.0 and perfect["precision_at_k"] == 1.0
    assert ranking_quality(np.array([False, False, False, True, True]))["auc"] == 0.0
    with pytest.raises(ValueError, match="both corrupted and clean"):
        ranking_quality(np.array([False, False]))


def test_the_detection_table_shows_each_seeds_auc_and_flags_a_reversed_ranking():
    """A mean can hide seeds that rank opposite ways: each seed's AUC is in the table, one
    below chance is marked, and the note says which premise it contradicts."""
    import pandas as pd

    from pipeline.suspects import detection_table

    def row(method, ranked, seed, auc):
        figures = {"precision_at_half": 0.5, "precision_at_k": 0.5, "recall_at_twice": 0.8}
        return {"noise": "u40", "method": method, "seed": seed, "ranked_by": ranked,
                "corrupted": 40, "examples": 100, "auc": auc, **figures}  # fmt: skip

    rows = pd.DataFrame(
        [row("mwn", "mean weight", s, a) for s, a in ((0, 0.832), (1, 0.981), (2, 0.05))]
        + [row("erm", "small loss (val-chosen epoch)", s, 0.97) for s in (0, 2)]
    )
    lines = detection_table(rows, "u40", [0, 1, 2])
    assert "| ROC AUC | ROC AUC per seed (0, 1, 2) | precision@K/2 |" in lines[2]
    mwn = next(line for line in lines if line.startswith("| mwn |"))
    assert "| 0.832, 0.981, 0.050 ✗ |" in mwn
    erm = next(line for line in lines if line.startswith("| erm |"))
    assert "| 0.970, —, 0.970 |" in erm and "✗" not in erm
    notes = [line for line in lines if line.startswith("✗")]
    assert len(notes) == 1 and "ranked by mean weight" in notes[0]
    assert "corrupted labels get the larger weights" in notes[0]
    assert all(len(line.split("|")) == len(lines[2].split("|")) for line in lines[2:6])


def test_example_weights_keep_each_examples_mean_and_last_weight():
    weights = ExampleWeights(4)
    weights.add(torch.tensor([0, 2]), torch.tensor([1.0, 3.0]))
    weights.add(torch.tensor([2, 1]), torch.tensor([5.0, 0.0]))
    assert weights.mean().tolist()[:3] == [1.0, 0.0, 4.0] and weights.mean()[3].isnan()
    assert weights.last.tolist()[:3] == [1.0, 0.0, 5.0] and weights.count.tolist() == [1, 1, 2, 0]
    copy = ExampleWeights(4)
    copy.load_state_dict(weights.state_dict())
    assert torch.equal(copy.total, weights.total)


@pytest.fixture
def prepared(workdir):
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["methods"].update({"l2rw": {}, "mwn": {}})
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["prepare", "--dataset", "digits"]) == 0
    assert main(["noise", "--dataset", "digits", "--noise", "uniform40", "--seeds", "0,1"]) == 0
    return load("params.yaml")


def read_rows(run: plan.Run) -> list[dict]:
    with open(run.file("examples.csv")) as f:
        return list(csv.DictReader(f))


def test_every_run_ranks_its_examples_and_scores_the_ranking(prepared):
    split = load_torch(plan.split_path("digits", "uniform40", 0), checksum=True)
    for method, score in (("l2rw", "weight_mean"), ("erm", "loss_best_val")):
        run = dataclasses.replace(RUN, method=method)
        train(prepared, run)
        rows = read_rows(run)
        assert [int(r["rank"]) for r in rows] == list(range(1, len(split["train_y"]) + 1))
        assert ("weight_mean" in rows[0]) == (method == "l2rw")
        by_index = sorted(rows, key=lambda r: int(r["index"]))
        assert [int(r["corrupted"]) for r in by_index] == split["noise_mask"].long().tolist()
        assert [int(r["row"]) for r in by_index] == split["train_idx"].tolist()
        assert [r["label"] for r in by_index] == [str(int(y)) for y in split["train_y"]]
        found = read_json(run.file("metrics.json"))["detection"]
        assert found["score"] == score and found["corrupted"] == int(split["noise_mask"].sum())
        if method == "l2rw":  # the rank follows the mean weight, lowest first
            means = [float(r["weight_mean"]) for r in rows]
            assert means == sorted(means) and 0 <= min(means) < 1 < max(means)
        else:  # the small-loss criterion at the epoch chosen on validation
            losses = [float(r["loss_best_val"]) for r in rows]
            assert losses == sorted(losses, reverse=True)


def test_examples_are_the_same_after_an_interruption_and_across_reruns(prepared):
    run = dataclasses.replace(RUN, method="mwn")
    train(prepared, run)
    first = Path(run.file("examples.csv")).read_bytes()
    train(prepared, run, stop_after_epoch=1)  # "killed" after epoch 1
    train(prepared, run)  # resumes: the weights of epoch 1 come from the checkpoint
    assert Path(run.file("examples.csv")).read_bytes() == first


def test_a_tables_ids_reach_its_examples(workdir, tiny_raw):
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(120, 3)), columns=["a", "b", "c"])
    frame["y"] = (frame.a > 0).astype(int)
    frame.insert(0, "key", [f"k{i}" for i in range(120)])
    frame.to_csv("mine.csv", index=False)
    tiny_raw["datasets"]["mine"] = {"source": "table", "path": "mine.csv", "label": "y",
                                    "id_column": "key", "test_size": 20}  # fmt: skip
    tiny_raw["noise"]["uniform40"]["val_size"] = 20
    tiny_raw["experiments"]["tiny"]["dataset"] = "mine"
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    p = load("params.yaml")
    assert main(["prepare", "--dataset", "mine"]) == 0
    assert main(["noise", "--dataset", "mine", "--noise", "uniform40", "--seeds", "0"]) == 0
    run = dataclasses.replace(RUN, dataset="mine", method="erm")
    train(p, run)
    rows = read_rows(run)
    assert len(rows) == 80 and all(r["id"] == f"k{r['row']}" for r in rows)


def test_the_suspects_stage_writes_tables_and_a_contact_sheet(prepared, tiny_raw):
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["experiments"]["tiny"].update(
        {"noise": ["uniform40"], "methods": ["erm", "l2rw"], "suspects": 2, "contact_sheet": True}
    )
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load("params.yaml")
    for method in ("erm", "l2rw"):
        for seed in (0, 1):
            train(p, dataclasses.replace(RUN, method=method, seed=seed))
    assert main(["suspects", "--experiment", "tiny"]) == 0
    md_path, csv_path, figure_path = plan.suspects_paths("tiny")
    md = Path(md_path).read_text()
    assert "| l2rw | mean weight |" in md and "| erm | small loss (val-chosen epoch) |" in md
    assert "### l2rw" in md and md.count("\n| 9 | ") == 2 * 2  # 2 per class and method
    rows = list(csv.DictReader(Path(csv_path).read_text().splitlines()))
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("erm", "l2rw")
                                                         for s in ("0", "1")}  # fmt: skip
    assert Path(figure_path).read_bytes().startswith(b"\x89PNG")
    job = plan.suspects_job(p, "tiny")
    assert all(o in job.committed for o in job.outs)
    run = dataclasses.replace(RUN, seed=0)
    assert run.file("suspects.npy") in job.deps and plan.prepared_path("digits") not in job.deps
    images, rows = np.load(run.file("suspects.npy")), read_rows(run)
    raw = load_torch(plan.prepared_path("digits"), checksum=True)["x"]
    assert images.shape == (12, 8, 8, 1)  # the top 12 suspects, in rank order
    assert all((images[i, :, :, 0] == raw[int(r["row"]), 0].numpy()).all() for i, r in
               enumerate(rows[:12]))  # fmt: skip
    # the stage reads no prepared data (absent in a fresh clone)
    Path(plan.prepared_path("digits")).unlink()
    before = Path(figure_path).read_bytes()
    suspects(p, "tiny")
    assert Path(figure_path).read_bytes() == before


def test_labels_as_given_get_suspects_but_no_detection(prepared):
    """docs/own-data.md's example: no label corrupted, so no detection table or curve;
    the suspects and a figure that says there is nothing to detect."""
    assert main(["noise", "--dataset", "digits", "--noise", "clean", "--seeds", "0,1"]) == 0
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["experiments"]["tiny"].update({"noise": ["clean"], "methods": ["l2rw"], "suspects": 1})
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load("params.yaml")
    for seed in (0, 1):
        train(p, dataclasses.replace(RUN, noise="clean", seed=seed))
    assert "detection" not in read_json(RUN.file("metrics.json").replace("uniform40", "clean"))
    assert main(["suspects", "--experiment", "tiny"]) == 0
    md_path, _, figure_path = plan.suspects_paths("tiny")
    md = Path(md_path).read_text()
    assert "ROC AUC" not in md and "### l2rw" in md
    assert Path(figure_path).read_bytes().startswith(b"\x89PNG")


def test_a_contact_sheet_needs_the_suspects_stage(tiny_raw):
    tiny_raw["experiments"]["tiny"]["contact_sheet"] = True
    with pytest.raises(ParamsError, match="experiments.tiny.contact_sheet: only with suspects"):
        parse(tiny_raw)


def test_the_examples_a_suspects_stage_reads_are_committed_and_no_others():
    p = load(REPO / "params.yaml")
    outputs = [(o, o in j.committed) for j in plan.jobs(p) for o in j.outs]
    examples = [(o, kept) for o, kept in outputs if o.endswith(("/examples.csv", "/suspects.npy"))]
    assert any(kept for _, kept in examples) and not all(kept for _, kept in examples)
    paths = [o for o, _ in examples]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        input="\n".join(paths),
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout.split()
    assert {o for o, kept in examples if not kept} == set(ignored)


def test_the_kept_examples_follow_the_experiments_and_check_says_when_they_do_not(
    workdir, tiny_raw, capsys
):
    Path(".gitignore").write_text("results/**/examples.csv\n")
    assert main(["dvc-yaml"]) == 0 and main(["check"]) == 0
    assert "!results" not in Path(".gitignore").read_text()  # no suspects stage: nothing kept
    tiny_raw["experiments"]["tiny"]["suspects"] = 2
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    assert main(["check"]) == 2  # dvc.yaml and .gitignore are stale
    assert main(["dvc-yaml"]) == 0 and main(["check"]) == 0
    text = Path(".gitignore").read_text()
    assert text.startswith("results/**/examples.csv\n") and text.count(plan.KEPT_BEGIN) == 1
    kept = "!results/runs/digits/mlp/short/uniform40/erm/seed*/examples.csv"
    assert kept in text.splitlines()
    Path("dvc.yaml").write_text(plan.dvc_yaml(load("params.yaml")))
    Path(".gitignore").write_text(text.replace(kept + "\n", ""))
    capsys.readouterr()
    assert main(["check"]) == 2
    assert "does not keep the files the suspects stages read" in capsys.readouterr().err


def test_breast_cancer_goes_through_the_table_source_from_a_csv(tmp_path, monkeypatch):
    from pipeline.config import DatasetSpec
    from pipeline.data import sources

    path = tmp_path / "breast_cancer.csv"
    monkeypatch.setattr(sources, "BREAST_CANCER_CSV", str(path))
    data = sources.sklearn_breast_cancer(DatasetSpec("sklearn_breast_cancer"))
    assert path.read_text().startswith("id,mean radius,") and data.x.shape == (569, 30)
    assert data.classes == ["malignant", "benign"] and data.ids[:2] == ["wdbc-000", "wdbc-001"]
