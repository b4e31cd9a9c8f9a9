"""The suspects stage: which training labels each method's ranking suspects, and, where the
noise stage corrupted labels, how well it finds them (a table per noise setting, mean ± 95% CI
over seeds, and the precision-recall curves). Reads each run's examples.csv and metrics.json
(pipeline/examples.py), and for a contact sheet the images each run kept (suspects.npy).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import plan
from pipeline.config import Params
from pipeline.io import read_json, save_figure, write_text
from pipeline.report import mean_ci95

FIGURES = {  # the detection columns of the table: (metrics key, heading)
    "auc": "ROC AUC",
    "precision_at_half": "precision@K/2",
    "precision_at_k": "precision@K (= recall@K)",
    "recall_at_twice": "recall@2K",
}


def ranked_by(found: dict, method_kind: str) -> str:
    if method_kind == "confident_learning":  # its recorded weight is cleanlab's label quality
        return "cleanlab label quality"
    return {"weight_mean": "mean weight", "loss_best_val": "small loss (val-chosen epoch)"}[
        found["score"]
    ]


def detection_rows(p: Params, experiment: str) -> pd.DataFrame:
    """One row per run whose split has corrupted labels: its ranking's detection figures."""
    rows = []
    for run in plan.runs(p, experiment):
        found = read_json(run.file("metrics.json")).get("detection")
        if found is None:
            continue
        rows.append(
            {
                "noise": run.noise,
                "method": run.method,
                "seed": run.seed,
                "ranked_by": ranked_by(found, p.method_kind(run.method)),
                "corrupted": found["corrupted"],
                "examples": found["examples"],
                **{key: found[key] for key in FIGURES},
            }
        )
    return pd.DataFrame(rows)


PREMISE = {  # what a ranking below chance (AUC < 0.5) contradicts, by what it ranks by
    "mean weight": "the corrupted labels get the larger weights, against the premise that the "
    "teacher down-weights them (for Meta-Weight-Net, whose weight is a function of the loss: "
    "the weight rises with the loss)",
    "small loss (val-chosen epoch)": "the corrupted labels have the smaller loss, against the "
    "small-loss premise",
}
REVERSED = "✗"  # marks a seed whose ranking is below chance


def per_seed_auc(group: pd.DataFrame, seeds: list[int]) -> str:
    """Each seed's ROC AUC in the order of `seeds` ("—": no corrupted label realised), a
    ranking below chance marked."""
    by_seed = dict(zip(group.seed, group.auc, strict=True))
    cells = []
    for seed in seeds:
        auc = by_seed.get(seed)
        cells.append("—" if auc is None else f"{auc:.3f}" + (f" {REVERSED}" if auc < 0.5 else ""))
    return ", ".join(cells)


def detection_table(rows: pd.DataFrame, noise: str, seeds: list[int]) -> list[str]:
    """Mean ± 95% CI of each figure, and each seed's ROC AUC: a mean can hide seeds whose
    rankings point opposite ways (an AUC of 0.05 and one of 0.98 average to chance)."""
    part = rows[rows.noise == noise]
    k = ", ".join(str(v) for v in sorted(set(part.corrupted)))
    n = ", ".join(str(v) for v in sorted(set(part.examples)))
    lines = [
        f"## {noise}: K = {k} corrupted labels among {n} training examples",
        "",
        f"| method | ranked by | ROC AUC | ROC AUC per seed ({', '.join(map(str, seeds))}) | "
        + " | ".join(list(FIGURES.values())[1:])
        + " |",
        "|---" * (len(FIGURES) + 3) + "|",
    ]
    reversed_premises = []
    for method, group in part.groupby("method", sort=False):
        cells = []
        for key in FIGURES:
            mean, ci = mean_ci95(group.sort_values("seed")[key].tolist())
            cells.append(f"{mean:.3f} ± {ci:.3f}")
        cells.insert(1, per_seed_auc(group, seeds))
        ranked = group.ranked_by.iloc[0]
        lines.append(f"| {method} | {ranked} | " + " | ".join(cells) + " |")
        if (group.auc < 0.5).any() and ranked not in reversed_premises:
            reversed_premises.append(ranked)
    lines.append("")
    for ranked in reversed_premises:
        lines += [f"{REVERSED} below chance: ranked by {ranked}, {PREMISE[ranked]}.", ""]
    return lines


def read_examples(run: plan.Run) -> pd.DataFrame:
    return pd.read_csv(run.file("examples.csv"), dtype={"label": str, "pred": str, "id": str})


def top_per_class(examples: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k most suspect examples of each given label; labels sorted as numbers where they
    are numbers, else by name."""
    ranked = examples.sort_values("rank")
    return (
        ranked.groupby("label", sort=True, group_keys=False)
        .head(k)
        .sort_values(["label", "rank"], key=lambda c: c.map(_label_key) if c.name == "label" else c)
    )


def _label_key(label: str):
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def _number(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.3f}"


def suspects_table(method: str, examples: pd.DataFrame, k: int) -> list[str]:
    has_id, has_weight = "id" in examples, "weight_mean" in examples
    header = ["given label", "rank", "row", *(["id"] if has_id else []), "predicted (p)"]
    loss = "final loss" if has_weight else "loss at the val-chosen epoch"
    header += [*(["mean weight", "last weight"] if has_weight else []), loss, "corrupted"]
    lines = [f"### {method}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for _, r in top_per_class(examples, k).iterrows():
        cells = [r.label, str(r["rank"]), str(r.row), *([str(r.id)] if has_id else [])]
        cells.append(f"{r.pred} ({r.prob:.2f})")
        if has_weight:
            cells += [_number(r.weight_mean), _number(r.weight_last)]
        cells += [_number(r.loss_best_val if not has_weight else r.loss), "yes" * r.corrupted]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def markdown(p: Params, experiment: str, rows: pd.DataFrame) -> str:
    exp = p.experiments[experiment]
    seed = p.seeds[0]
    lines = [
        f"# {exp.title or experiment}",
        "",
        "Each run ranks its training examples by how likely their given label is wrong: a "
        "reweighting method by the mean weight its teacher gave the example over training "
        "(lowest first), any other by the example's loss under its best-on-validation model "
        "(largest first: the small-loss criterion at the epoch chosen on the clean validation "
        "split). Every run's ranking is its `examples.csv`.",
        "",
    ]
    if not rows.empty:
        lines += [
            "How well the ranking finds the labels the noise stage corrupted (K of them): "
            f"mean ± 95% CI over seeds {', '.join(map(str, p.seeds))}. ROC AUC 0.5 is chance.",
            "",
        ]
        for noise in exp.noise:
            if noise in set(rows.noise):
                lines += detection_table(rows, noise, list(p.seeds))
        if exp.suspects_note:
            lines += [exp.suspects_note, ""]
    lines += [
        f"## The top {exp.suspects} suspects of each given label (seed {seed})",
        "",
        "`row`: the example's position in the prepared dataset (a table's data row, from 0); "
        "`corrupted`: the noise stage changed this label (unknown to the method).",
        "",
    ]
    for noise in exp.noise:
        lines += [f"## {noise}", ""]
        for run in plan.runs(p, experiment):
            if run.noise == noise and run.seed == seed:
                lines += suspects_table(run.method, read_examples(run), exp.suspects)
    return "\n".join(lines).rstrip() + "\n"


def mean_curve(p: Params, experiment: str, noise: str, method: str) -> tuple[list, list]:
    """Precision against recall, averaged over seeds at each depth of the ranking."""
    found = [
        read_json(r.file("metrics.json")).get("detection")
        for r in plan.runs(p, experiment)
        if r.noise == noise and r.method == method
    ]
    curves = [f["curve"] for f in found if f]  # a seed may realise no corrupted label
    mean = lambda key: [sum(c[key][i] for c in curves) / len(curves)  # noqa: E731
                        for i in range(len(curves[0][key]))]  # fmt: skip
    return mean("recall"), mean("precision")


def figure(p: Params, experiment: str, rows: pd.DataFrame) -> None:
    """Precision-recall curves per noise setting; with contact_sheet, the first seed's top
    suspects of each method (title: given label -> prediction; red: corrupted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = p.experiments[experiment]
    noises = [n for n in exp.noise if not rows.empty and n in set(rows.noise)]
    sheet_rows = len(exp.methods) if exp.contact_sheet else 0
    curve_rows = 1 if noises else 0
    width = max(4.5 * len(noises), 1.1 * plan.SUSPECT_IMAGES if sheet_rows else 0)
    heights = [4.0] * curve_rows + [1.3] * sheet_rows
    if not heights:  # no label was corrupted and no contact sheet was asked for
        fig, ax = plt.subplots(figsize=(4.5, 1.2))
        ax.text(0.5, 0.5, "no corrupted labels: nothing to detect", ha="center", va="center")
        ax.set_axis_off()
        save_figure(fig, plan.suspects_paths(experiment)[2])
        return
    fig = plt.figure(figsize=(width, sum(heights)))
    span = plan.SUSPECT_IMAGES if sheet_rows else 1  # grid columns per curve panel
    grid = fig.add_gridspec(len(heights), max(len(noises), 1) * span, height_ratios=heights)
    for i, noise in enumerate(noises):
        ax = fig.add_subplot(grid[0, i * span : (i + 1) * span])
        for method in exp.methods:
            ax.plot(*mean_curve(p, experiment, noise, method), label=method)
        part = rows[rows.noise == noise]
        ax.axhline(part.corrupted.sum() / part.examples.sum(), color="grey", lw=0.8, ls=":",
                   label="chance")  # fmt: skip
        ax.set(xlabel="recall", ylabel="precision", title=noise, xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="lower left")
    if sheet_rows:
        _contact_sheet(p, experiment, fig, grid, curve_rows, exp.noise[0], list(exp.methods))
    fig.tight_layout()
    save_figure(fig, plan.suspects_paths(experiment)[2])


def _contact_sheet(p, experiment, fig, grid, first_row, noise, methods) -> None:
    first = {(r.noise, r.method): r for r in plan.runs(p, experiment) if r.seed == p.seeds[0]}
    for i, method in enumerate(methods):
        run = first[noise, method]
        images = np.load(run.file("suspects.npy"), allow_pickle=False)  # in rank order
        if images.ndim != 4:
            raise ValueError(f"{run.file('suspects.npy')}: no images (contact_sheet is for images)")
        top = read_examples(run).sort_values("rank").head(len(images))
        for j, ((_, r), image) in enumerate(zip(top.iterrows(), images, strict=True)):
            ax = fig.add_subplot(grid[first_row + i, j])
            ax.imshow(image.squeeze(2) if image.shape[2] == 1 else image, cmap="gray")
            ax.set_title(f"{r.label}→{r.pred}", fontsize=6, color="red" if r.corrupted else "k")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(method, fontsize=8)


def suspects(p: Params, experiment: str) -> None:
    md_path, csv_path, _ = plan.suspects_paths(experiment)
    rows = detection_rows(p, experiment)
    write_text(markdown(p, experiment, rows), md_path)
    write_text(rows.to_csv(index=False, lineterminator="\n"), csv_path)
    figure(p, experiment, rows)
