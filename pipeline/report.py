"""The report stage: an experiment's tables (CSV, Markdown) and figure, mean +- 95% CI over seeds.

Output is deterministic: fixed row and column order (as listed in params.yaml), fixed float
formats, and PNG files without metadata, so two runs of the same profile are byte-identical.
"""

from __future__ import annotations

import math

import pandas as pd

from pipeline import plan
from pipeline.config import Params
from pipeline.io import read_json, write_text


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the Student-t 95% confidence interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def collect(p: Params, experiment: str) -> pd.DataFrame:
    """One row per run: noise setting, method, seed and test metrics."""
    rows = []
    for noise, method, seed in plan.runs(p, experiment):
        m = read_json(f"{plan.run_dir(experiment, noise, method, seed)}/metrics.json")
        rows.append({"noise": noise, "method": method, "seed": seed, **m["test"]})
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    rows = []
    for (noise, method), group in runs.groupby(["noise", "method"], sort=False):
        mean, ci = mean_ci95(group[metric].tolist())
        rows.append(
            {
                "noise": noise,
                "method": method,
                "seeds": len(group),
                f"{metric}_mean": round(mean, 2),
                f"{metric}_ci95": round(ci, 2),
            }
        )
    return pd.DataFrame(rows)


def markdown(p: Params, experiment: str, summary: pd.DataFrame, metric: str = "accuracy") -> str:
    exp = p.experiments[experiment]
    cell = {
        (r.noise, r.method): f"{r[f'{metric}_mean']:.2f} ± {r[f'{metric}_ci95']:.2f}"
        for _, r in summary.iterrows()
    }
    lines = [
        f"# {exp.title or experiment}",
        "",
        f"Test {metric} (%), mean ± 95% CI over {len(exp.seeds)} seeds "
        f"({', '.join(map(str, exp.seeds))}); dataset {exp.dataset}, model {exp.model}, "
        f"schedule {exp.schedule}; final model.",
        "",
        "| method | " + " | ".join(exp.noise) + " |",
        "|---|" + "---|" * len(exp.noise),
    ]
    for method in exp.methods:
        lines.append(f"| {method} | " + " | ".join(cell[(n, method)] for n in exp.noise) + " |")
    return "\n".join(lines) + "\n"


def figure(
    p: Params, experiment: str, summary: pd.DataFrame, path: str, metric: str = "accuracy"
) -> None:
    """Test metric per noise setting (against a noise field when the experiment names one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = p.experiments[experiment]
    if exp.figure:
        xs = [getattr(p.noise[n], exp.figure) or 0 for n in exp.noise]
        xlabel = exp.figure
    else:
        xs, xlabel = list(range(len(exp.noise))), "noise setting"
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for method in exp.methods:
        rows = summary.set_index(["noise", "method"]).loc[[(n, method) for n in exp.noise]]
        ax.errorbar(
            xs,
            rows[f"{metric}_mean"],
            yerr=rows[f"{metric}_ci95"],
            marker="o",
            capsize=3,
            label=method,
        )
    if not exp.figure:
        ax.set_xticks(xs, exp.noise)
    ax.set(xlabel=xlabel, ylabel=f"test {metric} (%)", title=exp.title or experiment)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from pipeline.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def report(p: Params, experiment: str) -> pd.DataFrame:
    summary = summarise(collect(p, experiment))
    csv_path, md_path = plan.table_paths(experiment)
    write_text(summary.to_csv(index=False, float_format="%.2f", lineterminator="\n"), csv_path)
    write_text(markdown(p, experiment, summary), md_path)
    figure(p, experiment, summary, plan.figure_path(experiment))
    return summary
