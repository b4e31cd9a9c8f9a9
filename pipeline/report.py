"""The report stage: an experiment's tables (CSV, Markdown) and figure, mean +- 95% CI over seeds.

Output is deterministic: fixed row and column order (as listed in params.yaml), fixed float
formats, and PNG files without metadata, so two runs of the same profile are byte-identical.
"""

from __future__ import annotations

import math
import textwrap

import pandas as pd

from pipeline import plan
from pipeline.catalog import HEADLINE, METRIC_LABEL
from pipeline.collapse import how_collapsed
from pipeline.config import Params, parse_claim, reported_numbers
from pipeline.io import read_json, save_figure, write_json, write_text


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the Student-t 95% confidence interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


TEACHER_ROW = " (teacher)"  # the suffix of a row that scores a method's own teacher


def collect(p: Params, experiment: str) -> pd.DataFrame:
    """One row per run and reported model: noise setting, row name, seed, test metrics.
    Row names are the method names, "<method> +ES" for the best-on-validation epoch and
    "<method> (teacher)" for the teacher a method learned (where the run scored it)."""
    exp = p.experiments[experiment]
    rows = []
    metric = headline_of(p, experiment)
    for run in plan.runs(p, experiment):
        m = read_json(run.file("metrics.json"))
        finite_or_refuse(run.file("metrics.json"), m)
        row = {"noise": run.noise, "method": run.method, "seed": run.seed, **m["test"]}
        rows.append({**row, "collapsed": collapsed_run(run, metric)})
        if "teacher_test" in m:  # a teacher of the student's architecture (MPL), scored alike
            rows.append(
                {
                    "noise": run.noise,
                    "method": f"{run.method}{TEACHER_ROW}",
                    "seed": run.seed,
                    **m["teacher_test"],
                }
            )
        if exp.early_stopping and "test_best_val" in m:
            rows.append(
                {
                    "noise": run.noise,
                    "method": f"{run.method} +ES",
                    "seed": run.seed,
                    **m["test_best_val"],
                }
            )
    rows += chosen_on_validation(exp, plan.runs(p, experiment), headline_of(p, experiment))
    return pd.DataFrame(rows)


def collapsed_run(run: plan.Run, metric: str) -> str:
    """How the run collapsed on validation (pipeline/collapse.py), or "" if it did not."""
    key = f"val_{'acc' if metric == 'accuracy' else metric}"
    classes = read_json(plan.split_summary_path(run.dataset, run.noise, run.seed))["num_classes"]
    return how_collapsed(read_json(run.file("history.json")), key, classes)


def headline_of(p: Params, experiment: str) -> str:
    """The test metric of the experiment's tables: accuracy, or a translation's BLEU."""
    return HEADLINE[p.datasets[p.experiments[experiment].dataset].facts.task]


def finite_or_refuse(path: str, metrics: dict) -> None:
    """A table never averages a NaN or an infinity: name the file and the figure."""
    for section in ("test", "test_best_val"):
        for key, value in metrics.get(section, {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise FloatingPointError(f"{path}: {section}.{key} is {value}; retrain this run")


def chosen_on_validation(exp, runs: list, metric: str = "accuracy") -> list[dict]:
    """Rows exp.chosen_row: per noise setting and seed, the test metrics of the variant
    in `choose_on_validation` with the best validation accuracy (first listed on ties)."""
    if not exp.choose_on_validation:
        return []
    name = exp.chosen_row
    best: dict[tuple[str, int], dict] = {}
    for run in runs:
        if run.method in exp.choose_on_validation:
            m = read_json(run.file("metrics.json"))
            key = (run.noise, run.seed)
            score = f"val_{metric}"
            if key not in best or m[score] > best[key][score]:
                best[key] = m
    return [
        {"noise": noise, "method": name, "seed": seed, **m["test"]}
        for (noise, seed), m in best.items()
    ]


# Seeds of one cell further apart than this (points of the metric) ended in different regimes
# (one collapsed to the majority class, say): the table marks the cell and lists every seed.
UNSTABLE_RANGE = 10.0


def summarise(runs: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Per (noise, method): seed count, mean, 95% CI and each seed's value in seed order."""
    rows = []
    for (noise, method), group in runs.groupby(["noise", "method"], sort=False):
        ordered = group.sort_values("seed")
        values = ordered[metric].tolist()
        mean, ci = mean_ci95(values)
        collapsed = ordered.get("collapsed", pd.Series([""] * len(ordered))).fillna("")
        rows.append(
            {
                "noise": noise,
                "method": method,
                "seeds": len(group),
                f"{metric}_mean": round(mean, 2),
                f"{metric}_ci95": round(ci, 2),
                f"{metric}_per_seed": " ".join(f"{v:.2f}" for v in values),
                "collapsed": "; ".join(
                    f"seed {seed}: {how}"
                    for seed, how in zip(ordered.seed, collapsed, strict=True)
                    if how
                ),
            }
        )
    return pd.DataFrame(rows)


def unstable(summary: pd.DataFrame, metric: str = "accuracy") -> dict[tuple[str, str], str]:
    """(noise, method) -> per-seed values, for the cells whose seeds span > UNSTABLE_RANGE."""
    out = {}
    for _, r in summary.iterrows():
        values = [float(v) for v in r[f"{metric}_per_seed"].split()]
        if max(values) - min(values) > UNSTABLE_RANGE:
            out[r.noise, r.method] = ", ".join(f"{v:.2f}" for v in values)
    return out


def collapsed_seeds(row) -> str:
    """A summary row's collapsed seeds ("" for none; a table read back from its CSV has NaN)."""
    value = row.get("collapsed")
    return value if isinstance(value, str) else ""


def over_seeds(seeds: tuple[int, ...]) -> str:
    if len(seeds) == 1:
        return f"one seed ({seeds[0]}), no interval"
    return f"mean ± 95% CI over {len(seeds)} seeds ({', '.join(map(str, seeds))})"


def interval(row, unstable_seeds: bool, metric: str = "accuracy") -> str:
    """A table cell: mean ± CI of a summary row, † when its seeds span UNSTABLE_RANGE, ‡ when
    a seed collapsed on validation."""
    mark = (" †" if unstable_seeds else "") + (" ‡" if collapsed_seeds(row) else "")
    if row.get("seeds") == 1:  # one seed has no interval
        return f"{row[f'{metric}_mean']:.2f}{mark}"
    return f"{row[f'{metric}_mean']:.2f} ± {row[f'{metric}_ci95']:.2f}{mark}"


def markdown(p: Params, experiment: str, summary: pd.DataFrame, metric: str = "accuracy") -> str:
    """Rows: our methods (and +ES rows), then methods only the papers ran; columns: our noise
    settings, then the papers' numbers for the analogous setting."""
    exp = p.experiments[experiment]
    reported = reported_numbers()
    papers = [reported[name] for name in exp.reported]
    spread = unstable(summary, metric)
    cell = {
        (r.noise, r.method): interval(r, (r.noise, r.method) in spread, metric)
        for _, r in summary.iterrows()
    }
    ours = list(dict.fromkeys(summary["method"]))
    key = paper_keys(p, experiment)

    def paper_value(paper: dict, row: str) -> str:
        return paper["values"].get(key(row, paper), "—")

    sole = {key(m, paper) for m in ours for paper in papers}
    theirs = [k for paper in papers for k in paper["values"] if k not in ours and k not in sole]
    header = ["method", *exp.noise, *(f"paper [{i + 1}]" for i in range(len(papers)))]
    lines = [
        f"# {exp.title or experiment}",
        "",
        f"Test {METRIC_LABEL[metric]}, {over_seeds(p.seeds)}; dataset {exp.dataset}, "
        f"model {exp.model}, "
        f'schedule {exp.schedule}. Rows are the final model; "+ES" rows the epoch best '
        "on the clean validation split."
        + (
            ' "(teacher)" rows score the final teacher network itself, a model of the '
            "student's architecture, on the same test split."
            if any(m.endswith(TEACHER_ROW) for m in ours)
            else ""
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for row in ours + list(dict.fromkeys(theirs)):
        label = row if row in ours else f"{row} (reported)"
        values = [cell.get((n, row), "—") for n in exp.noise]
        values += [paper_value(paper, row) for paper in papers]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    if spread:
        lines += [
            "",
            f"† unstable: seeds more than {UNSTABLE_RANGE:g} points apart; per seed "
            f"({', '.join(map(str, p.seeds))}):",
        ]
        lines += [f"- {method}, {noise}: {values}" for (noise, method), values in spread.items()]
    collapsed = [r for _, r in summary.iterrows() if collapsed_seeds(r)]
    if collapsed:
        lines += ["", "‡ a seed collapsed on the validation split (pipeline/collapse.py):"]
        lines += [f"- {r.method}, {r.noise}: {r.collapsed}" for r in collapsed]
    lines += [""] + [f"[{i + 1}] {paper['label']}" for i, paper in enumerate(papers)]
    return "\n".join(lines).rstrip() + "\n"


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
    for method in exp.methods:  # the final models (no +ES rows)
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
    title = textwrap.fill(exp.title or experiment, 60)  # long titles wrap, not cut
    ax.set(xlabel=xlabel, ylabel=f"test {METRIC_LABEL[metric]}", title=title)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


CURVES = (  # history key, panel title (LGTM Figure 2)
    ("student_val_loss", "student: validation loss"),
    ("val_acc", "student: validation accuracy"),
    ("teacher_val_loss", "teacher: validation loss"),
    ("teacher_val_acc", "teacher: validation accuracy"),
)


def curve_series(p: Params, experiment: str) -> dict[tuple[str, str], tuple[list, list]]:
    """(method, history key) -> (student steps, mean over seeds) for every CURVES key a
    method's histories record (epoch ends and `eval_every` steps), on the experiment's first
    noise setting."""
    exp, series = p.experiments[experiment], {}
    for method in exp.methods:
        cell = plan.Cell(exp.dataset, exp.model, exp.schedule, exp.noise[0], method, p.seeds)
        histories = [read_json(run.file("history.json")) for run in cell.runs]
        for key, _ in CURVES:
            points = [[r for r in h if key in r] for h in histories]
            if points[0]:
                steps = [r["step"] for r in points[0]]
                mean = [sum(h[i][key] for h in points) / len(points) for i in range(len(steps))]
                series[method, key] = steps, mean
    return series


def curves_figure(p: Params, experiment: str, path: str) -> None:
    """LGTM Figure 2: validation loss and accuracy of student and teacher along training, one
    panel per CURVES key, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = p.experiments[experiment]
    series = curve_series(p, experiment)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(13, 3.2), dpi=100)
    lines = {}
    for k, method in enumerate(exp.methods):
        for ax, (key, title) in zip(axes, CURVES, strict=True):
            if (method, key) in series:
                steps, mean = series[method, key]
                style = {"color": f"C{k}", "marker": "os^vDx"[k % 6], "markersize": 4}
                dashed = {"linestyle": "--"} if k % 2 else {}  # coinciding curves stay visible
                (lines[method],) = ax.plot(steps, mean, **style, **dashed)
            ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xlabel("student step")
        ax.grid(alpha=0.3)
    fig.legend(lines.values(), lines.keys(), loc="lower center", ncol=len(lines), fontsize=8)
    fig.suptitle(exp.title or experiment, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure(fig, path)


def table_numbers(summary: pd.DataFrame, metric: str = "accuracy") -> dict:
    """{noise: {row: {"mean", "ci95"}}}: the table's numbers, compact (DVC's metrics)."""
    out: dict = {}
    for _, r in summary.iterrows():
        cell = {"mean": float(r[f"{metric}_mean"]), "ci95": float(r[f"{metric}_ci95"])}
        out.setdefault(r.noise, {})[r.method] = cell
    return out


def report(p: Params, experiment: str) -> pd.DataFrame:
    metric = headline_of(p, experiment)
    summary = summarise(collect(p, experiment), metric)
    csv_path, md_path = plan.table_paths(experiment)
    write_text(summary.to_csv(index=False, float_format="%.2f", lineterminator="\n"), csv_path)
    write_text(markdown(p, experiment, summary, metric), md_path)
    write_json(table_numbers(summary, metric), plan.metrics_path(experiment))
    if p.experiments[experiment].curves_figure:
        curves_figure(p, experiment, plan.figure_path(experiment))
    else:
        figure(p, experiment, summary, plan.figure_path(experiment), metric)
    return summary


VERDICTS = ("reproduced", "not separated", "contradicted")


def verdict(ours: tuple[float, float], baseline: tuple[float, float]) -> str:
    """A claim "ours above baseline" from (mean, 95% CI half-width) of each: reproduced when
    the intervals are apart in the claim's direction, contradicted when apart the other way,
    not separated when they overlap."""
    (a, a_ci), (b, b_ci) = ours, baseline
    if a - a_ci > b + b_ci:
        return VERDICTS[0]
    if b - b_ci > a + a_ci:
        return VERDICTS[2]
    return VERDICTS[1]


def paper_keys(p: Params, experiment: str):
    """key(row, paper): the name of our row in a paper's values: the row's own name, else
    its method kind (e.g. "dlf") for the first variant of that kind the experiment lists
    (e.g. dlf_finetune; dlf_finetune_eos after it is a variant beside the paper's form)."""
    kinds = {m: p.method_kind(m) for m in p.experiments[experiment].methods}
    first: dict[str, str] = {}  # kind -> its first listed variant
    for method, kind in kinds.items():
        first.setdefault(kind, method)
    by_kind = {method: kind for kind, method in first.items()}

    def key(row: str, paper: dict) -> str:
        return row if row in paper["values"] else by_kind.get(row, row)

    return key


def fidelity_rows(p: Params, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per claim of the active profile's experiments, from their summary tables."""
    reported = reported_numbers()
    rows = []
    for name, exp in p.active_experiments.items():
        metric = headline_of(p, name)
        cells = tables[name].set_index(["noise", "method"]) if exp.claims else None
        spread = unstable(tables[name], metric) if exp.claims else {}
        key = paper_keys(p, name)
        for text in exp.claims:
            method, baseline, noise, named = parse_claim(text, exp.noise[0])
            ours, base = (cells.loc[(noise, m)] for m in (method, baseline))
            candidates = [named] if named else exp.reported
            paper = next(
                (
                    reported[r]
                    for r in candidates
                    if {key(method, reported[r]), key(baseline, reported[r])}
                    <= set(reported[r]["values"])
                ),
                None,
            )
            rows.append(
                {
                    "experiment": name,
                    "claim": f"{method} > {baseline}",
                    "noise": noise,
                    "ours": interval(ours, (noise, method) in spread, metric),
                    "baseline": interval(base, (noise, baseline) in spread, metric),
                    "verdict": verdict(
                        (ours[f"{metric}_mean"], ours[f"{metric}_ci95"]),
                        (base[f"{metric}_mean"], base[f"{metric}_ci95"]),
                    ),
                    "paper": paper["label"] if paper else "",
                    "paper_ours": paper["values"][key(method, paper)] if paper else "",
                    "paper_baseline": paper["values"][key(baseline, paper)] if paper else "",
                }
            )
    return pd.DataFrame(rows)


def fidelity_markdown(p: Params, rows: pd.DataFrame) -> str:
    metrics = {headline_of(p, e) for e in (rows["experiment"] if len(rows) else ())}
    measure = "accuracy (%)" + (" (translations: sacreBLEU)" if "bleu" in metrics else "")
    lines = [
        "# Fidelity: the papers' headline claims, tested on this profile's analogues",
        "",
        f"Test {measure}, mean ± 95% CI over {len(p.seeds)} seeds. A claim is "
        '"method above baseline", as the paper reports it. Verdict: **reproduced** (our '
        "intervals apart, in the paper's direction), **not separated** (they overlap), "
        "**contradicted** (apart, the other way); † marks a row whose seeds lie more than "
        f"{UNSTABLE_RANGE:g} points apart (different regimes; its table lists them). The "
        "experiments are analogues at CPU scale (see each table); a verdict is about the "
        "analogue, not the paper.",
        "",
        "| experiment | claim | noise | ours | baseline | verdict | paper: ours | "
        "paper: baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    papers: list[str] = []
    for r in rows.itertuples():
        ref = ""
        if r.paper:
            papers += [] if r.paper in papers else [r.paper]
            ref = f" [{papers.index(r.paper) + 1}]"
        lines.append(
            f"| [{r.experiment}]({r.experiment}.md) | {r.claim} | {r.noise} | {r.ours} | "
            f"{r.baseline} | **{r.verdict}** | {r.paper_ours or '—'}{ref} | "
            f"{r.paper_baseline or '—'} |"
        )
    notes = [(n, e.fidelity_note) for n, e in p.active_experiments.items() if e.fidelity_note]
    if notes:
        lines += ["", "## What was measured behind the verdicts", ""]
        lines += [f"- **{name}**: {note}" for name, note in notes]
    lines += [""] + [f"[{i + 1}] {label}" for i, label in enumerate(papers)]
    return "\n".join(lines).rstrip() + "\n"


def fidelity(p: Params) -> pd.DataFrame:
    """results/tables/fidelity.{csv,md} from the tables of the experiments with claims."""
    tables = {
        name: pd.read_csv(plan.table_paths(name)[0])
        for name, exp in p.active_experiments.items()
        if exp.claims
    }
    rows = fidelity_rows(p, tables)
    csv_path, md_path = plan.FIDELITY_PATHS
    write_text(rows.to_csv(index=False, lineterminator="\n"), csv_path)
    write_text(fidelity_markdown(p, rows), md_path)
    return rows


def teacher_records(p: Params, experiment: str) -> tuple[dict, dict, dict]:
    """What the runs of `experiment` recorded of their teachers, by (noise, method), seeds
    pooled: weight points (loss, weight, label lists concatenated), weight histograms (counts
    summed) and loss teachers' records (one per seed)."""
    hists: dict[tuple[str, str], dict] = {}
    points: dict[tuple[str, str], dict] = {}
    teachers: dict[tuple[str, str], list] = {}
    for run in plan.runs(p, experiment):
        metrics = read_json(run.file("metrics.json"))
        if "teacher_history" in metrics.get("teacher", {}):
            teachers.setdefault((run.noise, run.method), []).append(metrics["teacher"])
        if "weight_points" in metrics:
            total = points.setdefault(
                (run.noise, run.method), {"loss": [], "weight": [], "label": []}
            )
            for key in total:
                total[key] += metrics["weight_points"][key]
        if "weight_histogram" in metrics:
            hist = metrics["weight_histogram"]
            zeros = [0] * len(hist["clean"])
            total = hists.setdefault(
                (run.noise, run.method), {"edges": hist["edges"], "clean": zeros, "noisy": zeros}
            )
            for key in ("clean", "noisy"):
                total[key] = [a + b for a, b in zip(total[key], hist[key], strict=True)]
    return points, hists, teachers


def weights_figure(p: Params, experiment: str) -> None:
    """What the teachers produced. For reweighting methods, the example weights half-way
    through training, one panel per noise setting and method, seeds pooled: weight against
    training loss coloured by label where the runs kept points (DIR Figure 2), else
    histograms of the weights of clean and corrupted examples (Ren et al. Figure 3). For a
    loss teacher (DLF), its Figures 3 and 4 (see _loss_teacher_figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, hists, teachers = teacher_records(p, experiment)
    if teachers:
        return _loss_teacher_figure(teachers, plan.weights_figure_path(experiment))
    panels = points or hists
    if not panels:
        raise ValueError(f"{experiment}: no run recorded example weights or a loss teacher")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, ((noise, method), data) in zip(axes[0], panels.items(), strict=True):
        if points:
            _weight_scatter(ax, data)
        else:
            _weight_histogram(ax, data)
        ax.set_title(f"{method}, {noise}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, plan.weights_figure_path(experiment))


def _weight_histogram(ax, h: dict) -> None:
    labels = [f"{a:g}-{b}" for a, b in zip(h["edges"], [*h["edges"][1:], "inf"], strict=True)]
    pos = range(len(labels))
    for k, key in enumerate(("clean", "noisy")):
        counts = h[key]
        share = [c / max(sum(counts), 1) for c in counts]
        ax.bar([i + 0.4 * k for i in pos], share, 0.4, label=f"{key} labels")
    ax.set_xticks([i + 0.2 for i in pos], labels, rotation=45, fontsize=7)
    ax.set(xlabel="weight x batch size", ylabel="fraction of examples")
    ax.legend(fontsize=8)


def _weight_scatter(ax, pts: dict) -> None:
    scatter = ax.scatter(pts["loss"], pts["weight"], c=pts["label"], cmap="tab10", s=6)
    ax.set(xlabel="training loss", ylabel="weight x batch size")
    ax.legend(*scatter.legend_elements(), fontsize=6, title="label", title_fontsize=7, ncols=2)


def _loss_teacher_figure(teachers: dict, path: str) -> None:
    """L2T-DLF Figure 3 (the dev measure along teacher optimisation, one line per seed) and
    Figure 4 (the loss coefficients Phi_t of the first seed at three points of training; a
    translation's, one per target token, as a histogram)."""
    import matplotlib.pyplot as plt

    (noise, method), records = next(iter(teachers.items()))
    snapshots = records[0]["loss_coefficients"]
    fig, axes = plt.subplots(1, 1 + len(snapshots), figsize=(4 * (1 + len(snapshots)), 3.4))
    for seed, record in enumerate(records):
        history = record["teacher_history"]
        steps = [h["teacher_step"] for h in history]
        axes[0].plot(steps, [h["dev_expected_accuracy"] for h in history], label=f"seed {seed}")
    axes[0].set(xlabel="teacher optimisation step", ylabel="dev expected accuracy")
    axes[0].set_title(f"{method}, {noise}: dev measure", fontsize=9)
    axes[0].legend(fontsize=7)
    if isinstance(snapshots[0]["phi"][0], list):  # C x C coefficients: a heat map each
        bound = max(abs(v) for snap in snapshots for row in snap["phi"] for v in row) or 1.0
        for ax, snap in zip(axes[1:], snapshots, strict=True):
            image = ax.imshow(snap["phi"], cmap="coolwarm", vmin=-bound, vmax=bound)
            ax.set(xlabel="class j", ylabel="class i (label)")
            ax.set_title(f"Phi_t(i, j) at step {snap['step']}", fontsize=9)
        fig.colorbar(image, ax=list(axes[1:]), shrink=0.8)
    else:  # one coefficient per target token (a translation): their distribution
        for ax, snap in zip(axes[1:], snapshots, strict=True):
            ax.hist(snap["phi"], bins=50, log=True)
            ax.set(xlabel="Phi_t(v)", ylabel="target tokens v")
            ax.set_title(f"Phi_t over the vocabulary at step {snap['step']}", fontsize=9)
    save_figure(fig, path)
