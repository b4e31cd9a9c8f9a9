"""The experiment grid as jobs: every path and command of every stage is defined here once.

A run is identified by what determines its result (dataset, model, schedule, noise setting,
method, seed), not by the experiment that asks for it, so experiments that share a setting
(a sweep point and a table cell, say) share the run. The Snakemake rules name the same paths
through these functions, dvc.yaml is generated from `jobs()`, and tests/test_workflow.py
checks that Snakemake's DAG and dvc.yaml list the same jobs, commands and outputs.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

from pipeline.config import Params

DATA = "results/data"
RUNS = "results/runs"


@dataclass(frozen=True)
class Run:
    dataset: str
    model: str
    schedule: str
    noise: str
    method: str
    seed: int | str  # str: a Snakemake wildcard pattern

    @property
    def dir(self) -> str:
        return "/".join([RUNS, *map(str, astuple(self)[:-1]), f"seed{self.seed}"])

    def file(self, name: str) -> str:
        return f"{self.dir}/{name}"

    @property
    def checkpoint(self) -> str:
        """Resume state, deliberately outside the declared outputs (both engines delete those)."""
        return self.dir.replace(RUNS, "results/checkpoints", 1) + ".pt"

    @property
    def name(self) -> str:
        return "-".join(str(v) for v in astuple(self)[:-1]) + f"-seed{self.seed}"

    @property
    def args(self) -> str:
        return "".join(f" --{f.name} {getattr(self, f.name)}" for f in fields(self))


WILDCARDS = Run(*(f"{{{f.name}}}" for f in fields(Run)))  # paths with Snakemake wildcards


def prepared_path(dataset: str) -> str:
    return f"{DATA}/prepared/{dataset}.pt"


def split_path(dataset: str, noise: str, seed: int | str) -> str:
    return f"{DATA}/noise/{dataset}/{noise}/seed{seed}.pt"


def split_summary_path(dataset: str, noise: str, seed: int | str) -> str:
    return f"results/noise/{dataset}/{noise}/seed{seed}.json"


def log_path(stage: str, name: str) -> str:
    return f"results/logs/{stage}/{name}.log"


def table_paths(experiment: str) -> list[str]:
    return [f"results/tables/{experiment}.{ext}" for ext in ("csv", "md")]


def figure_path(experiment: str) -> str:
    return f"results/figures/{experiment}.png"


def weights_figure_path(experiment: str) -> str:
    return f"results/figures/weights/{experiment}.png"


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


def train_job(p: Params, run: Run) -> Job:
    """Train, then score the model on the test split in the same process (a separate
    evaluate job would cost a second torch start-up per run; `python -m pipeline evaluate`
    re-scores a saved model on demand)."""
    committed = (run.file("history.json"), run.file("metrics.json"))
    return Job(
        f"train-{run.name}",
        "python -m pipeline train" + run.args,
        (prepared_path(run.dataset), split_path(run.dataset, run.noise, run.seed)),
        (run.file("model.pt"), *committed),
        (f"models.{run.model}", f"schedules.{run.schedule}", f"methods.{run.method}", "run"),
        committed=committed,
    )


def report_job(p: Params, experiment: str) -> Job:
    exp = p.experiments[experiment]
    outs = (*table_paths(experiment), figure_path(experiment))
    return Job(
        f"report-{experiment}",
        _cmd("report", experiment=experiment),
        tuple(r.file("metrics.json") for r in runs(p, experiment)),
        outs,
        (f"experiments.{experiment}", *(f"noise.{n}" for n in exp.noise)),
        committed=outs,
    )


def weights_job(p: Params, experiment: str) -> Job:
    """The distribution of the example weights of clean and corrupted examples."""
    out = weights_figure_path(experiment)
    return Job(
        f"weights-{experiment}",
        _cmd("weights", experiment=experiment),
        tuple(r.file("metrics.json") for r in runs(p, experiment)),
        (out,),
        (f"experiments.{experiment}",),
        committed=(out,),
    )


def runs(p: Params, experiment: str) -> list[Run]:
    """Every run of an experiment, in table order."""
    e = p.experiments[experiment]
    return [
        Run(e.dataset, e.model, e.schedule, n, m, s)
        for n in e.noise
        for m in e.methods
        for s in e.seeds
    ]


def jobs(p: Params) -> list[Job]:
    """Every job of the active profile, each once, in a fixed order."""
    out: dict[str, Job] = {}
    for name, exp in p.active_experiments.items():
        found = [prepare_job(p, exp.dataset)]
        found += [noise_job(p, exp.dataset, n, s) for n in exp.noise for s in exp.seeds]
        for run in runs(p, name):
            found.append(train_job(p, run))
        found.append(report_job(p, name))
        if exp.weights_figure:
            found.append(weights_job(p, name))
        out.update((j.name, j) for j in found if j.name not in out)
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
    if stage == "train":
        return train_job(p, Run(**args))
    make = {
        "prepare": prepare_job,
        "noise": noise_job,
        "report": report_job,
        "weights": weights_job,
    }.get(stage)
    return make(p, **args) if make else None


def final_targets(p: Params) -> list[str]:
    """What `snakemake` builds: the tables and figures, and every committed output (the
    noise summaries too, which no later job reads)."""
    return [o for j in jobs(p) for o in j.committed]


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
