"""The experiment grid as jobs: every path and command of every stage is defined here once.

The Snakemake rules (workflow/rules/*.smk) name the same paths through these functions, and
dvc.yaml is generated from `jobs()`; tests/test_workflow.py checks that Snakemake's DAG and
dvc.yaml list the same jobs with the same commands and outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Params

DATA = "results/data"
RUNS = "results/runs"


def prepared_path(dataset: str) -> str:
    return f"{DATA}/prepared/{dataset}.pt"


def split_path(dataset: str, noise: str, seed: int | str) -> str:
    return f"{DATA}/noise/{dataset}/{noise}/seed{seed}.pt"


def split_summary_path(dataset: str, noise: str, seed: int | str) -> str:
    return f"results/noise/{dataset}/{noise}/seed{seed}.json"


def run_dir(experiment: str, noise: str, method: str, seed: int | str) -> str:
    return f"{RUNS}/{experiment}/{noise}/{method}/seed{seed}"


def run_file(experiment: str, noise: str, method: str, seed: int | str, name: str) -> str:
    return f"{run_dir(experiment, noise, method, seed)}/{name}"


def checkpoint_path(experiment: str, noise: str, method: str, seed: int | str) -> str:
    """Resume state, deliberately outside the declared outputs (both engines delete those)."""
    return f"results/checkpoints/{experiment}/{noise}/{method}/seed{seed}.pt"


def log_path(stage: str, name: str) -> str:
    return f"results/logs/{stage}/{name}.log"


def table_paths(experiment: str) -> list[str]:
    return [f"results/tables/{experiment}.{ext}" for ext in ("csv", "md")]


def figure_path(experiment: str) -> str:
    return f"results/figures/{experiment}.png"


@dataclass(frozen=True)
class Job:
    name: str  # the DVC stage name
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...]  # dotted params.yaml keys the job reads
    committed: tuple[str, ...] = ()  # outputs kept in git (small JSON, tables, figures)

    @property
    def log(self) -> str:
        """Where the command writes its own log (both engines get it)."""
        stage, name = self.name.split("-", 1)
        return log_path(stage, name)


def _cmd(stage: str, **args: object) -> str:
    return "python -m pipeline " + stage + "".join(f" --{k} {v}" for k, v in args.items())


def prepare_job(p: Params, dataset: str) -> Job:
    return Job(
        f"prepare-{dataset}",
        _cmd("prepare", dataset=dataset),
        (),
        (prepared_path(dataset),),
        (f"datasets.{dataset}",),
    )


def noise_job(p: Params, dataset: str, noise: str, seed: int) -> Job:
    return Job(
        f"noise-{dataset}-{noise}-seed{seed}",
        _cmd("noise", dataset=dataset, noise=noise, seed=seed),
        (prepared_path(dataset),),
        (split_path(dataset, noise, seed), split_summary_path(dataset, noise, seed)),
        (f"datasets.{dataset}", f"noise.{noise}"),
        committed=(split_summary_path(dataset, noise, seed),),
    )


def train_job(p: Params, experiment: str, noise: str, method: str, seed: int) -> Job:
    exp = p.experiments[experiment]
    out = run_dir(experiment, noise, method, seed)
    return Job(
        f"train-{experiment}-{noise}-{method}-seed{seed}",
        _cmd("train", experiment=experiment, noise=noise, method=method, seed=seed),
        (prepared_path(exp.dataset), split_path(exp.dataset, noise, seed)),
        (f"{out}/model.pt", f"{out}/history.json"),
        (
            f"experiments.{experiment}.dataset",
            f"experiments.{experiment}.model",
            f"experiments.{experiment}.schedule",
            f"models.{exp.model}",
            f"schedules.{exp.schedule}",
            f"methods.{method}",
            "run",
        ),
        committed=(f"{out}/history.json",),
    )


def evaluate_job(p: Params, experiment: str, noise: str, method: str, seed: int) -> Job:
    exp = p.experiments[experiment]
    out = run_dir(experiment, noise, method, seed)
    return Job(
        f"evaluate-{experiment}-{noise}-{method}-seed{seed}",
        _cmd("evaluate", experiment=experiment, noise=noise, method=method, seed=seed),
        (prepared_path(exp.dataset), split_path(exp.dataset, noise, seed), f"{out}/model.pt"),
        (f"{out}/metrics.json",),
        ("run",),
        committed=(f"{out}/metrics.json",),
    )


def report_job(p: Params, experiment: str) -> Job:
    exp = p.experiments[experiment]
    outs = (*table_paths(experiment), figure_path(experiment))
    return Job(
        f"report-{experiment}",
        _cmd("report", experiment=experiment),
        tuple(f"{run_dir(experiment, *r)}/metrics.json" for r in runs(p, experiment)),
        outs,
        (f"experiments.{experiment}", *(f"noise.{n}" for n in exp.noise)),
        committed=outs,
    )


def runs(p: Params, experiment: str) -> list[tuple[str, str, int]]:
    """(noise, method, seed) of every run of an experiment, in table order."""
    exp = p.experiments[experiment]
    return [(n, m, s) for n in exp.noise for m in exp.methods for s in exp.seeds]


def jobs(p: Params) -> list[Job]:
    """Every job of the active profile, each once, in a fixed order."""
    out: dict[str, Job] = {}
    for name, exp in p.active_experiments.items():
        found = [prepare_job(p, exp.dataset)]
        found += [noise_job(p, exp.dataset, n, s) for n in exp.noise for s in exp.seeds]
        for n, m, s in runs(p, name):
            found += [train_job(p, name, n, m, s), evaluate_job(p, name, n, m, s)]
        found.append(report_job(p, name))
        out.update((j.name, j) for j in found)
    return list(out.values())


def param_values(p: Params, job: Job) -> dict:
    """The values of a job's dotted params keys."""
    values = {}
    for key in job.params:
        node = p.raw
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def job_for(p: Params, stage: str, args: dict) -> Job | None:
    """The job of a pipeline stage called with these arguments (None for helper commands)."""
    make = {
        "prepare": prepare_job,
        "noise": noise_job,
        "train": train_job,
        "evaluate": evaluate_job,
        "report": report_job,
    }.get(stage)
    return make(p, **args) if make else None


def final_targets(p: Params) -> list[str]:
    return [o for j in jobs(p) if j.name.startswith("report-") for o in j.outs]


def dvc_yaml(p: Params) -> str:
    """dvc.yaml for the active profile (generated: edit params.yaml, then regenerate)."""
    import yaml

    stages = {}
    for j in jobs(p):
        stage: dict = {"cmd": j.cmd}
        if j.deps:
            stage["deps"] = list(j.deps)
        stage["params"] = list(j.params)
        stage["outs"] = [{o: {"cache": False}} if o in j.committed else o for o in j.outs]
        stages[j.name] = stage
    header = (
        "# Generated by `python -m pipeline dvc-yaml` from params.yaml: do not edit.\n"
        "# The same commands as the Snakemake rules (tests/test_workflow.py checks it).\n"
    )
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=100)
