"""Tables and figures: the statistics, the layout beside the papers' numbers, determinism."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from pipeline.config import ParamsError, parse
from pipeline.evaluate import classification_metrics, weight_histogram
from pipeline.report import fidelity_markdown, fidelity_rows, markdown, mean_ci95, summarise


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


def test_a_single_seed_profile_shows_values_without_an_interval(tiny_raw):
    """A profile of one seed (params.yaml's `long`) has no confidence interval: the table
    says so and shows the value alone, not "± 0.00"."""
    tiny_raw["profile"] = "other"  # seeds [0]
    p = parse(tiny_raw)
    runs = pd.DataFrame(
        [{"noise": n, "method": "erm", "seed": 0, "accuracy": 90.0} for n in ("clean", "uniform40")]
    )
    lines = markdown(p, "tiny", summarise(runs)).splitlines()
    assert "| erm | 90.00 | 90.00 |" in lines
    assert lines[2].startswith("Test accuracy (%), one seed (0), no interval; dataset digits")


def test_seeds_far_apart_are_marked_and_listed(tiny_raw):
    """A cell whose seeds span more than UNSTABLE_RANGE points gets a dagger and its seeds
    under the table (in seed order, whatever the row order); the CSV lists every seed."""
    p = parse(tiny_raw)
    runs = pd.DataFrame(
        [
            {"noise": "clean", "method": "erm", "seed": 1, "accuracy": 49.45},
            {"noise": "clean", "method": "erm", "seed": 0, "accuracy": 98.34},
            {"noise": "uniform40", "method": "erm", "seed": 0, "accuracy": 80.0},
            {"noise": "uniform40", "method": "erm", "seed": 1, "accuracy": 90.0},
        ]
    )
    summary = summarise(runs)
    assert summary["accuracy_per_seed"].tolist() == ["98.34 49.45", "80.00 90.00"]
    lines = markdown(p, "tiny", summary).splitlines()
    assert "| erm | 73.90 ± 310.60 † | 85.00 ± 63.53 |" in lines  # 10 points apart: stable
    assert "- erm, clean: 98.34, 49.45" in lines
    assert any(line.startswith("† unstable: seeds more than 10 points apart") for line in lines)
    calm = markdown(p, "tiny", summarise(runs[runs.noise == "uniform40"]))
    assert "†" not in calm


def test_a_papers_method_kind_goes_on_our_only_variant_of_it(tiny_raw):
    """The paper's L2RW number lands on l2rw_fast (our sole l2rw variant), not as a
    "(reported)" row; with two variants, on the first listed (the paper's form, a variant
    beside it after)."""
    tiny_raw["methods"].update(l2rw_fast={"method": "l2rw"}, l2rw_b={"method": "l2rw"})
    tiny_raw["experiments"]["tiny"].update(reported=["l2rw_t1_cifar10"])

    def table(methods: list[str]) -> list[str]:
        tiny_raw["experiments"]["tiny"]["methods"] = methods
        runs = pd.DataFrame(
            [
                {"noise": n, "method": m, "seed": s, "accuracy": 90.0 + s}
                for n in ("clean", "uniform40")
                for s in (0, 1)
                for m in methods
            ]
        )
        return markdown(parse(tiny_raw), "tiny", summarise(runs)).splitlines()

    one = table(["erm", "l2rw_fast"])
    assert "| l2rw_fast | 90.50 ± 6.35 | 90.50 ± 6.35 | 86.92 ± 0.19 |" in one
    assert not any(line.startswith("| l2rw (reported)") for line in one)
    two = table(["l2rw_fast", "l2rw_b"])
    assert "| l2rw_fast | 90.50 ± 6.35 | 90.50 ± 6.35 | 86.92 ± 0.19 |" in two
    assert "| l2rw_b | 90.50 ± 6.35 | 90.50 ± 6.35 | — |" in two
    assert not any(line.startswith("| l2rw (reported)") for line in two)


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


def test_variant_chosen_on_validation_per_seed(workdir, tiny_raw):
    """The "(val-chosen)" row takes, for each noise setting and seed, the test result of the
    variant with the best validation accuracy, not the best test accuracy."""
    from pipeline import plan
    from pipeline.io import write_json
    from pipeline.report import chosen_on_validation

    tiny_raw["methods"] = {
        "focal_a": {"method": "focal", "gamma": 0.5},
        "focal_b": {"method": "focal"},
    }
    tiny_raw["experiments"]["tiny"].update(
        methods=["focal_a", "focal_b"], choose_on_validation=["focal_a", "focal_b"]
    )
    p = parse(tiny_raw)
    val = {("focal_a", 0): 80.0, ("focal_b", 0): 70.0, ("focal_a", 1): 60.0, ("focal_b", 1): 65.0}
    for run in plan.runs(p, "tiny"):
        v = val[(run.method, run.seed)]
        write_json({"val_accuracy": v, "test": {"accuracy": 100 - v}}, run.file("metrics.json"))
    rows = chosen_on_validation(p.experiments["tiny"], plan.runs(p, "tiny"))
    chosen = {(r["noise"], r["seed"]): r["accuracy"] for r in rows}
    assert {r["method"] for r in rows} == {"focal (val-chosen)"}
    assert chosen == {(n, s): a for n in ("clean", "uniform40") for s, a in ((0, 20.0), (1, 35.0))}


def test_weights_figure_scatters_weight_against_loss(workdir, tiny_raw):
    """DIR Figure 2: one panel per (noise, method), the seeds' points pooled."""
    from pipeline import plan
    from pipeline.io import write_json
    from pipeline.report import teacher_records, weights_figure

    tiny_raw["experiments"]["tiny"]["weights_figure"] = True
    p = parse(tiny_raw)
    for run in plan.runs(p, "tiny"):
        points = {"loss": [0.1, 2.0], "weight": [1.2, run.seed], "label": [0, 1]}
        write_json({"weight_points": points}, run.file("metrics.json"))
    points, hists, teachers = teacher_records(p, "tiny")
    assert not hists and not teachers
    assert points == {
        (noise, "erm"): {"loss": [0.1, 2.0] * 2, "weight": [1.2, 0, 1.2, 1], "label": [0, 1] * 2}
        for noise in ("clean", "uniform40")
    }
    weights_figure(p, "tiny")
    png = workdir / plan.weights_figure_path("tiny")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_weights_figure_histograms_sum_the_seeds(workdir, tiny_raw):
    """Ren et al. Figure 3: the weights of clean and corrupted examples, counts over seeds."""
    from pipeline import plan
    from pipeline.io import write_json
    from pipeline.report import teacher_records, weights_figure

    p = parse(tiny_raw)
    for run in plan.runs(p, "tiny"):
        hist = {"edges": [0, 0.5, 1], "clean": [1, 2, run.seed], "noisy": [3, 0, 1]}
        write_json({"weight_histogram": hist}, run.file("metrics.json"))
    points, hists, _ = teacher_records(p, "tiny")
    assert not points and set(hists) == {("clean", "erm"), ("uniform40", "erm")}
    assert hists["clean", "erm"] == {"edges": [0, 0.5, 1], "clean": [2, 4, 1], "noisy": [6, 0, 2]}
    weights_figure(p, "tiny")
    assert (workdir / plan.weights_figure_path("tiny")).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("phi", [[[1.0, -0.5], [0.2, 1.0]], [1.0, 2.9, 1.2, 0.8]])
def test_loss_teacher_figure_from_recorded_history(workdir, tiny_raw, phi):
    """Classes x classes coefficients, or one per target token (a translation)."""
    from pipeline import plan
    from pipeline.io import write_json
    from pipeline.report import teacher_records, weights_figure

    tiny_raw["experiments"]["tiny"]["weights_figure"] = True
    p = parse(tiny_raw)
    history = [{"teacher_step": k, "dev_expected_accuracy": 0.5 + k / 10} for k in (1, 2, 3)]
    snaps = [{"step": s, "phi": phi} for s in (10, 20, 30)]
    for run in plan.runs(p, "tiny"):
        teacher = {"teacher_history": history, "loss_coefficients": snaps}
        write_json({"teacher": teacher}, run.file("metrics.json"))
    _, _, teachers = teacher_records(p, "tiny")
    assert teachers[("clean", "erm")] == [teacher, teacher]  # one record per seed
    weights_figure(p, "tiny")
    assert (workdir / plan.weights_figure_path("tiny")).read_bytes()[:4] == b"\x89PNG"


def test_curves_average_seeds_at_every_recorded_step(workdir, tiny_raw):
    """LGTM Figure 2's series: each method's validation records (epoch ends and the steps in
    between), averaged over seeds; a method without a learning teacher has no teacher curve."""
    from pipeline import plan
    from pipeline.io import write_json
    from pipeline.report import curve_series, curves_figure

    tiny_raw["methods"]["l2rw"] = {}
    tiny_raw["experiments"]["tiny"].update(methods=["erm", "l2rw"], curves_figure=True)
    p = parse(tiny_raw)
    for run in plan.runs(p, "tiny"):
        shift = run.seed / 10
        history = [
            {"step": 5, "val_acc": 0.5 + shift},
            {"epoch": 1, "step": 10, "loss": 1.0, "val_acc": 0.7 + shift},
        ]
        if run.method == "l2rw":
            for record in history:
                record.update(teacher_val_loss=1.0 - shift, teacher_val_acc=0.6)
        write_json(history, run.file("history.json"))
    series = curve_series(p, "tiny")
    assert set(series) == {
        ("erm", "val_acc"),
        ("l2rw", "val_acc"),
        ("l2rw", "teacher_val_loss"),
        ("l2rw", "teacher_val_acc"),
    }
    steps, mean = series["erm", "val_acc"]
    assert steps == [5, 10] and mean == pytest.approx([0.55, 0.75])  # seeds 0 and 1
    assert series["l2rw", "teacher_val_loss"][1] == pytest.approx([0.95, 0.95])
    curves_figure(p, "tiny", "curves.png")
    assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def summary_of(means: dict[str, tuple[float, float]], spread: float = 1.0) -> pd.DataFrame:
    """A summary table of noise setting uniform40 with (mean, CI) per row name and two seeds
    `spread` points apart."""
    return pd.DataFrame(
        [
            {
                "noise": "uniform40",
                "method": m,
                "accuracy_mean": a,
                "accuracy_ci95": ci,
                "accuracy_per_seed": f"{a - spread / 2:.2f} {a + spread / 2:.2f}",
            }
            for m, (a, ci) in means.items()
        ]
    )


@pytest.mark.parametrize(
    ("ours", "expected"),
    [
        ((80.0, 1.0), "reproduced"),  # 79-81 above the baseline's 62-64
        ((65.0, 1.5), "not separated"),  # 63.5-66.5 overlaps 62-64
        ((58.0, 2.0), "contradicted"),  # 56-60 below 62-64
    ],
)
def test_fidelity_verdict_follows_the_confidence_intervals(tiny_raw, ours, expected):
    tiny_raw["methods"]["l2rw"] = {}
    tiny_raw["experiments"]["tiny"].update(
        methods=["erm", "l2rw"],
        reported=["l2rw_t1_cifar10"],
        claims=["l2rw > erm @ uniform40", "l2rw +ES > erm @ uniform40"],
        fidelity_note="a measured reason",
    )
    p = parse(tiny_raw)
    table = summary_of({"erm": (63.0, 1.0), "l2rw": ours, "l2rw +ES": (80.0, 0.5)})
    rows = fidelity_rows(p, {"tiny": table})
    assert rows.verdict.tolist() == [expected, "reproduced"]
    assert rows.iloc[0].ours == f"{ours[0]:.2f} ± {ours[1]:.2f}"
    assert (rows.iloc[0].paper_ours, rows.iloc[0].paper_baseline) == (
        "86.92 ± 0.19",
        "67.97 ± 0.62",
    )
    assert rows.iloc[1].paper == ""  # the paper has no "l2rw +ES" number
    text = fidelity_markdown(p, rows)
    assert f"| **{expected}** | 86.92 ± 0.19 [1] | 67.97 ± 0.62 |" in text
    assert "- **tiny**: a measured reason" in text
    assert text.rstrip().endswith(
        "[1] Ren et al. 2018 Table 1: CIFAR-10, uniform flip 40%, WRN-28-10"
    )


@pytest.mark.parametrize(
    "claim",
    [
        "l2rw >> erm",
        "l2rw > nothing",
        "l2rw > erm @ clean2",
        "dir (val-chosen) > erm",  # the experiment chooses no variant on validation
    ],
)
def test_malformed_claims_are_refused_naming_the_key(tiny_raw, claim):
    tiny_raw["methods"]["l2rw"] = {}
    tiny_raw["experiments"]["tiny"].update(methods=["erm", "l2rw"], claims=[claim])
    with pytest.raises(ParamsError, match=r"experiments\.tiny\.claims\[0\]"):
        parse(tiny_raw)


def test_fidelity_names_the_papers_entry_and_marks_unstable_rows(tiny_raw):
    """ "from <entry>" picks the paper's table (here CIFAR-100's, not the first listed); a row
    whose seeds span more than UNSTABLE_RANGE is marked as in the tables."""
    tiny_raw["methods"]["l2rw"] = {}
    tiny_raw["experiments"]["tiny"].update(
        methods=["erm", "l2rw"],
        reported=["l2rw_t1_cifar10", "l2rw_t1_cifar100"],
        claims=["l2rw > erm @ uniform40 from l2rw_t1_cifar100"],
    )
    p = parse(tiny_raw)
    table = summary_of({"erm": (63.0, 1.0), "l2rw": (80.0, 1.0)}, spread=12.0)
    (row,) = fidelity_rows(p, {"tiny": table}).itertuples()
    assert (row.paper_ours, row.paper_baseline) == ("61.34 ± 2.06", "50.66 ± 0.24")
    assert row.ours == "80.00 ± 1.00 †" and row.verdict == "reproduced"
    tiny_raw["experiments"]["tiny"]["claims"] = ["l2rw > erm from l2rw_t2_cifar10"]
    with pytest.raises(ParamsError, match=r"claims\[0\]: 'l2rw_t2_cifar10' is not in reported"):
        parse(tiny_raw)


def test_fidelity_maps_a_sole_variant_to_its_kinds_paper_value(tiny_raw):
    """As the table does: l2rw_k (our one variant of l2rw) and erm_k (of erm) carry the
    paper's l2rw and erm numbers."""
    tiny_raw["methods"].update({"l2rw_k": {"method": "l2rw"}, "erm_k": {"method": "erm"}})
    tiny_raw["experiments"]["tiny"].update(
        methods=["erm_k", "l2rw_k"],
        reported=["l2rw_t1_cifar10"],
        claims=["l2rw_k > erm_k @ uniform40"],
    )
    p = parse(tiny_raw)
    table = summary_of({"erm_k": (63.0, 1.0), "l2rw_k": (80.0, 1.0)})
    (row,) = fidelity_rows(p, {"tiny": table}).itertuples()
    assert (row.paper_ours, row.paper_baseline) == ("86.92 ± 0.19", "67.97 ± 0.62")
    rows = markdown(p, "tiny", table).splitlines()
    assert next(r for r in rows if r.startswith("| l2rw_k |")).endswith("| 86.92 ± 0.19 |")
    assert not any(r.startswith("| l2rw (reported)") for r in rows)


def test_the_val_chosen_row_is_named_by_the_variants_common_name(tiny_raw):
    experiment = tiny_raw["experiments"]["tiny"]
    for variants, row in (
        (["focal_g05", "focal_g1", "focal_g2"], "focal (val-chosen)"),
        (["dlf", "dlf_warm"], "dlf (val-chosen)"),
        (["dir_loss_k2b2", "dir_loss_k2b2_lr01"], "dir_loss_k2b2 (val-chosen)"),
    ):
        tiny_raw["methods"].update({v: {"method": "erm"} for v in variants})
        experiment.update(methods=variants, choose_on_validation=variants, claims=[])
        assert parse(tiny_raw).experiments["tiny"].chosen_row == row
    experiment["claims"] = ["dir (val-chosen) > dir_loss_k2b2"]
    with pytest.raises(ParamsError, match=r"claims\[0\]: 'dir \(val-chosen\)' is not"):
        parse(tiny_raw)


def test_each_experiment_is_filed_under_its_paper_in_the_report():
    from pipeline.plan import PAPERS, paper_of

    assert paper_of("reduced_mpl_fmnist") == paper_of("mpl_moons") == PAPERS["mpl"]
    assert paper_of("l2rw_uniform_fmnist") == PAPERS["l2rw"]
    assert paper_of("dlf_mnist10k_mlp") != paper_of("dir_clean_fmnist")
    assert paper_of("erm_uniform_fmnist") == paper_of("tiny") == "Baselines"


def test_a_scored_teacher_gets_its_own_row_after_its_method(workdir, tiny_raw):
    """A run whose metrics hold the teacher's test scores (MPL) adds a "(teacher)" row right
    after its method's row; runs without one add none."""
    from pipeline import plan
    from pipeline.io import write_json
    from pipeline.report import collect

    tiny_raw["methods"] = {"erm": None, "mpl": None}
    tiny_raw["experiments"]["tiny"].update(methods=["mpl", "erm"], noise=["clean"])
    p = parse(tiny_raw)
    for run in plan.runs(p, "tiny"):
        metrics = {"test": {"accuracy": 70.0 + run.seed}}
        if run.method == "mpl":
            metrics["teacher_test"] = {"accuracy": 80.0 + run.seed}
        write_json(metrics, run.file("metrics.json"))
        write_json([], run.file("history.json"))  # what collect reads to find a collapse
        write_json({"num_classes": 10}, plan.split_summary_path(run.dataset, run.noise, run.seed))
    summary = summarise(collect(p, "tiny"))
    assert summary["method"].tolist() == ["mpl", "mpl (teacher)", "erm"]
    assert summary.set_index("method").loc["mpl (teacher)", "accuracy_mean"] == 80.5
    text = markdown(p, "tiny", summary)
    assert '"(teacher)" rows score the final teacher network' in text
    assert "| mpl (teacher) | 80.50 ± " in text
