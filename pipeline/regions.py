"""Figures for two-dimensional data (two moons): Meta Pseudo Labels Figures 1 and 8.

Figure 1: one panel per method, the decision regions of its first seed's final model over the
plane, the unlabelled training points coloured by their true class and the labelled ones as
stars; the title gives the test accuracy over seeds (mean +- 95% CI). Figure 8: the cosine
similarity of the student's gradient on its training batch and on its labelled (validation)
batch along training, for the methods that logged it (`gradient_cosine: true`), mean over seeds.
Coordinates are the standardised features the models read.
"""

from __future__ import annotations

import torch

from pipeline import plan
from pipeline.config import Params
from pipeline.core.student import predict
from pipeline.io import load_torch, read_json, save_figure
from pipeline.models import build_model
from pipeline.report import mean_ci95
from pipeline.task import load_task

GRID = 200  # points per axis of the decision-region grid


def regions_figures(p: Params, experiment: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = p.experiments[experiment]
    noise, seed = exp.noise[0], p.seeds[0]
    data = load_task(exp.dataset, noise, seed)
    if data.train_x.dim() != 2 or data.train_x.shape[1] != 2:
        raise ValueError(f"{experiment}: decision regions need two-dimensional inputs")
    points = torch.cat([data.train_x, data.val_x])
    low, high = points.amin(0) - 0.5, points.amax(0) + 0.5
    axes_values = [torch.linspace(float(low[i]), float(high[i]), GRID) for i in range(2)]
    xx, yy = torch.meshgrid(*axes_values, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)

    spec = p.models[exp.model]
    fig, axes = plt.subplots(1, len(exp.methods), figsize=(3.6 * len(exp.methods), 3.4))
    for ax, method in zip(list(getattr(axes, "flat", [axes])), exp.methods, strict=True):
        run = plan.Run(exp.dataset, exp.model, exp.schedule, noise, method, seed)
        model = build_model(spec.arch, data.in_shape, data.num_classes, **spec.options)
        model.load_state_dict(load_torch(run.file("model.pt"))["model"])
        with torch.no_grad():
            regions = predict(model, grid).argmax(1).reshape(GRID, GRID)
        ax.contourf(xx, yy, regions, levels=[-0.5, 0.5, 1.5], colors=["#f4b6b6", "#b9e4b9"])
        colours = ["#c0392b", "#1e8449"]
        for c in range(2):
            mine = data.train_y_clean == c
            ax.scatter(*data.train_x[mine].T, s=3, color=colours[c], alpha=0.6)
            labelled = data.val_y == c
            ax.scatter(*data.val_x[labelled].T, s=160, marker="*", color=colours[c], ec="black")
        accuracies = [
            read_json(r.file("metrics.json"))["test"]["accuracy"]
            for r in plan.Cell(exp.dataset, exp.model, exp.schedule, noise, method, p.seeds).runs
        ]
        mean, ci = mean_ci95(accuracies)
        ax.set_title(f"{method}: {mean:.2f} ± {ci:.2f}% test", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    paths = plan.regions_figure_paths(experiment)
    save_figure(fig, paths[0])

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for method in exp.methods:
        runs = plan.Cell(exp.dataset, exp.model, exp.schedule, noise, method, p.seeds).runs
        histories = [read_json(r.file("history.json")) for r in runs]
        curves = [[h["grad_cosine"] for h in hist if "grad_cosine" in h] for hist in histories]
        if not curves[0]:
            continue
        mean_curve = [sum(v) / len(v) for v in zip(*curves, strict=True)]
        ax.plot(range(1, len(mean_curve) + 1), mean_curve, label=method)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="epoch", ylabel="cosine(training grad, validation grad)")
    ax.set_title(f"{exp.dataset}, {noise}: gradient alignment", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, paths[1])
