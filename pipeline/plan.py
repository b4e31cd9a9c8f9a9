"""The experiment grid as jobs: every path and command of every stage is defined here once.

A run is identified by what determines its result (dataset, model, schedule, noise setting,
method, seed), not by the experiment that asks for it, so experiments that share a setting
(a sweep point and a table cell, say) share the run. One train job trains every seed of a
setting (a `Cell`) and one noise job splits every seed of a noise setting, in one process:
a torch start-up costs seconds, as much as training a small run. The Snakemake rules name the
same paths through these functions, dvc.yaml is generated from `jobs()`, and
tests/test_workflow.py checks that Snakemake's DAG and dvc.yaml list the same jobs, commands
and outputs.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

from pipeline.config import PARAMS_FILE, Params, ParamsError

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


RUN_OUTPUTS = ("model.pt", "history.json", "metrics.json", "examples.csv", "suspects.npy")
PER_EXAMPLE = ("examples.csv", "suspects.npy")  # committed where a suspects stage reads them
SUSPECT_IMAGES = 12  # the top suspects whose images a run keeps in suspects.npy
TEACHERS = "results/teachers"


@dataclass(frozen=True)
class TeacherRun(Run):
    """A pretrained teacher (params.yaml `teachers`) on one seed's split: trained like a run
    of its model, schedule and method, kept apart from the runs it serves."""

    teacher: str = ""

    @property
    def dir(self) -> str:
        return teacher_dir(self.teacher, self.dataset, self.noise, self.seed)

    @property
    def checkpoint(self) -> str:
        return self.dir.replace(TEACHERS, "results/checkpoints/teachers", 1) + ".pt"

    @property
    def name(self) -> str:
        return f"{self.teacher}-{self.dataset}-{self.noise}-seed{self.seed}"


def teacher_dir(teacher: str, dataset: str, noise: str, seed: int | str) -> str:
    return f"{TEACHERS}/{dataset}/{noise}/{teacher}/seed{seed}"


def teacher_runs(p: Params, teacher: str, dataset: str, noise: str, seeds) -> list[TeacherRun]:
    t = p.teachers[teacher]
    return [TeacherRun(dataset, t.model, t.schedule, noise, t.method, s, teacher) for s in seeds]


def seeds_arg(seeds: tuple[int, ...]) -> str:
    return ",".join(map(str, seeds))


@dataclass(frozen=True)
class Cell:
    """One setting with all of its seeds: what one train job trains."""

    dataset: str
    model: str
    schedule: str
    noise: str
    method: str
    seeds: tuple[int, ...]

    @classmethod
    def wildcards(cls, seeds: tuple[int, ...]) -> Cell:
        """The Snakemake pattern of a train job (the profile's seeds are fixed)."""
        return cls(*(f"{{{f.name}}}" for f in fields(cls)[:-1]), seeds)

    @property
    def runs(self) -> list[Run]:
        return [Run(*astuple(self)[:-1], s) for s in self.seeds]

    @property
    def name(self) -> str:
        return "-".join(astuple(self)[:-1])

    @property
    def outputs(self) -> list[str]:
        return [r.file(name) for r in self.runs for name in RUN_OUTPUTS]

    @property
    def args(self) -> str:
        names = [f.name for f in fields(self)[:-1]]
        return "".join(f" --{n} {getattr(self, n)}" for n in names) + (
            f" --seeds {seeds_arg(self.seeds)}"
        )


def prepared_path(dataset: str) -> str:
    return f"{DATA}/prepared/{dataset}.pt"


def split_path(dataset: str, noise: str, seed: int | str) -> str:
    return f"{DATA}/noise/{dataset}/{noise}/seed{seed}.pt"


SPLIT_SUMMARIES = "results/noise"  # committed: each split's sizes, rate and classes


def split_summary_path(dataset: str, noise: str, seed: int | str) -> str:
    return f"{SPLIT_SUMMARIES}/{dataset}/{noise}/seed{seed}.json"


def split_outputs(dataset: str, noise: str, seeds: tuple[int, ...]) -> list[str]:
    """What a noise job writes: the split and its summary, per seed."""
    return [f(dataset, noise, s) for s in seeds for f in (split_path, split_summary_path)]


def log_path(stage: str, name: str) -> str:
    return f"results/logs/{stage}/{name}.log"


def benchmark_path(stage: str, name: str) -> str:
    """Snakemake's record of a job's wall time and memory (its `benchmark:` file)."""
    return f"results/logs/benchmarks/{stage}/{name}.tsv"


def table_paths(experiment: str) -> list[str]:
    return [f"results/tables/{experiment}.{ext}" for ext in ("csv", "md")]


def metrics_path(experiment: str) -> str:
    """The table's numbers (mean and CI per noise setting and method) as DVC metrics."""
    return f"results/tables/{experiment}.json"


def figure_path(experiment: str) -> str:
    return f"results/figures/{experiment}.png"


FIDELITY_PATHS = ("results/tables/fidelity.csv", "results/tables/fidelity.md")

PAPERS = {  # an experiment's name starts with its paper's key: the report's categories
    "l2rw": "Learning to Reweight Examples (Ren et al. 2018)",
    "dir": "Reweighting with deep interactions (DIR)",
    "dlf": "Learning to Teach with Dynamic Loss Functions (Wu et al. 2018)",
    "mpl": "Meta Pseudo Labels (Pham et al. 2021)",
    "reduced_mpl": "Meta Pseudo Labels (Pham et al. 2021)",
    "lgtm": "Learning Good Teacher Matters (Ren et al. 2023)",
}


def paper_of(experiment: str) -> str:
    """The paper an experiment reproduces (by its name's first part), or "Baselines"."""
    keys = sorted(PAPERS, key=len, reverse=True)  # reduced_mpl before mpl
    return next((PAPERS[k] for k in keys if experiment.startswith(k + "_")), "Baselines")


def weights_figure_path(experiment: str) -> str:
    return f"results/figures/weights/{experiment}.png"


def suspects_paths(experiment: str) -> tuple[str, str, str]:
    """The suspects stage's Markdown (detection tables, top suspects per class), its CSV
    (detection figures per run) and its figure (precision-recall curves; images)."""
    return (
        f"results/tables/suspects/{experiment}.md",
        f"results/tables/suspects/{experiment}.csv",
        f"results/figures/suspects/{experiment}.png",
    )


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


def remake_prepared(dataset: str) -> str:
    """How to write a prepared dataset again (for the error on a corrupt one)."""
    return f"delete it and rerun, or run `{_cmd('prepare', dataset=dataset)}`"


def remake_split(dataset: str, noise: str, seed: int) -> str:
    return (
        f"delete it and rerun, or run `{_cmd('noise', dataset=dataset, noise=noise, seeds=seed)}`"
    )


def prepare_job(p: Params, dataset: str) -> Job:
    spec = p.datasets[dataset]
    # the user's own files or folders: a change of one reruns the job
    files = tuple(f for f in (spec.path, spec.val_path) if f)
    return Job(
        f"prepare-{dataset}",
        _cmd("prepare", dataset=dataset),
        files,
        (prepared_path(dataset),),
        (f"datasets.{dataset}",),
    )


def noise_job(p: Params, dataset: str, noise: str, seeds: tuple[int, ...]) -> Job:
    outs = tuple(split_outputs(dataset, noise, seeds))
    return Job(
        f"noise-{dataset}-{noise}",
        _cmd("noise", dataset=dataset, noise=noise, seeds=seeds_arg(seeds)),
        (prepared_path(dataset),),
        outs,
        (f"datasets.{dataset}", f"noise.{noise}"),
        committed=tuple(o for o in outs if o.endswith(".json")),
    )


def train_job(p: Params, cell: Cell) -> Job:
    """Train each seed, then score its model on the test split, in one process (a separate
    evaluate job would cost a second torch start-up per run; `python -m pipeline evaluate`
    re-scores a saved model on demand)."""
    teacher = p.teacher_of(cell.method)
    pretrained = (
        [r.file("model.pt") for r in teacher_runs(p, teacher, cell.dataset, cell.noise, cell.seeds)]
        if teacher
        else []
    )
    return Job(
        f"train-{cell.name}",
        "python -m pipeline train" + cell.args,
        (
            prepared_path(cell.dataset),
            *(split_path(cell.dataset, cell.noise, s) for s in cell.seeds),
            *pretrained,
        ),
        tuple(cell.outputs),
        (f"models.{cell.model}", f"schedules.{cell.schedule}", f"methods.{cell.method}", "run"),
        committed=tuple(
            o
            for o in cell.outputs
            if o.endswith(".json")
            or (o.rsplit("/", 1)[1] in PER_EXAMPLE and read_by_suspects(p, cell))
        ),
    )


GITIGNORE = ".gitignore"
KEPT_BEGIN = "# >>> the per-example files a suspects stage reads, committed (written by"
KEPT_END = "# <<< end of the block `python -m pipeline dvc-yaml` writes"


def gitignore_block(p: Params) -> str:
    """The .gitignore lines that keep in git the examples.csv and suspects.npy a suspects
    stage of the active profile reads (every other one is ignored)."""
    kept = sorted(
        {
            f"!{o.rsplit('/seed', 1)[0]}/seed*/{o.rsplit('/', 1)[1]}"
            for j in jobs(p)
            for o in j.committed
            if o.rsplit("/", 1)[1] in PER_EXAMPLE
        }
    )
    head = [KEPT_BEGIN, "# `python -m pipeline dvc-yaml` from params.yaml; do not edit)"]
    return "\n".join([*head, *kept, KEPT_END]) + "\n"


def with_gitignore_block(text: str, block: str) -> str:
    """A .gitignore's text with its generated block replaced (or added at the end)."""
    if KEPT_BEGIN in text and KEPT_END in text:
        before, rest = text.split(KEPT_BEGIN, 1)
        after = rest.split(KEPT_END, 1)[1].lstrip("\n")
        return before + block + after
    return text + ("" if text.endswith("\n") or not text else "\n") + block


def read_by_suspects(p: Params, cell: Cell) -> bool:
    """Whether a suspects stage reads this cell's examples.csv and suspects.npy (then they
    are committed, as the stage's other inputs are; elsewhere they are regenerated with the
    run)."""
    return any(
        exp.suspects and cell in cells(p, name) for name, exp in p.active_experiments.items()
    )


def pretrain_outputs(teacher: str, dataset: str, noise: str, seeds) -> list[str]:
    """What a pretrain job writes (names may be Snakemake wildcards)."""
    dirs = [teacher_dir(teacher, dataset, noise, s) for s in seeds]
    return [f"{d}/{name}" for d in dirs for name in RUN_OUTPUTS]


def pretrain_job(p: Params, teacher: str, dataset: str, noise: str, seeds) -> Job:
    """Pretrain a teacher on every seed's split; every method that names it reuses it."""
    t = p.teachers[teacher]
    outs = tuple(pretrain_outputs(teacher, dataset, noise, seeds))
    return Job(
        f"pretrain-{teacher}-{dataset}-{noise}",
        _cmd("pretrain", teacher=teacher, dataset=dataset, noise=noise, seeds=seeds_arg(seeds)),
        (prepared_path(dataset), *(split_path(dataset, noise, s) for s in seeds)),
        outs,
        (
            f"teachers.{teacher}",
            f"models.{t.model}",
            f"schedules.{t.schedule}",
            f"methods.{t.method}",
            "run",
        ),
        committed=tuple(o for o in outs if o.endswith(".json")),
    )


def report_job(p: Params, experiment: str) -> Job:
    exp = p.experiments[experiment]
    outs = (*table_paths(experiment), metrics_path(experiment), figure_path(experiment))
    read = ("metrics.json", "history.json")  # the history: curves, and whether a run collapsed
    summaries = [split_summary_path(r.dataset, r.noise, r.seed) for r in runs(p, experiment)]
    return Job(
        f"report-{experiment}",
        _cmd("report", experiment=experiment),
        (
            *(r.file(name) for r in runs(p, experiment) for name in read),
            *dict.fromkeys(summaries),
        ),
        outs,
        (f"experiments.{experiment}", *(f"noise.{n}" for n in exp.noise)),
        committed=outs,
    )


def weights_job(p: Params, experiment: str) -> Job:
    """The distribution of the example weights of clean and corrupted examples."""
    outs = (weights_figure_path(experiment),)
    return _reading_runs(p, "weights", experiment, ("metrics.json",), outs)


def suspects_job(p: Params, experiment: str) -> Job:
    """Which training labels each method's ranking suspects, and how well it finds the
    corrupted ones; a contact sheet shows the images each run kept of its top suspects
    (suspects.npy), so the stage needs no prepared data (absent in a fresh clone)."""
    names = ("examples.csv", "suspects.npy", "metrics.json")
    return _reading_runs(p, "suspects", experiment, names, suspects_paths(experiment))


def _reading_runs(p: Params, stage: str, experiment: str, names, outs) -> Job:
    """A stage of one experiment that reads the files `names` of each of its runs and writes
    committed figures or tables."""
    return Job(
        f"{stage}-{experiment}",
        _cmd(stage, experiment=experiment),
        tuple(r.file(n) for r in runs(p, experiment) for n in names),
        tuple(outs),
        (f"experiments.{experiment}",),
        committed=tuple(outs),
    )


def fidelity_job(p: Params) -> Job:
    """The fidelity summary: one row per claim of the active profile's experiments, from
    their tables."""
    claimed = [name for name, exp in p.active_experiments.items() if exp.claims]
    return Job(
        "fidelity-all",
        "python -m pipeline fidelity",
        tuple(table_paths(name)[0] for name in claimed),
        FIDELITY_PATHS,
        tuple(f"experiments.{name}" for name in claimed),
        committed=FIDELITY_PATHS,
    )


def regions_figure_paths(experiment: str) -> list[str]:
    return [f"results/figures/regions/{experiment}{suffix}.png" for suffix in ("", "_cosine")]


def regions_job(p: Params, experiment: str) -> Job:
    """Two-dimensional data: each method's decision regions, and the cosine of its training
    and validation gradients over training (MPL Figures 1 and 8)."""
    names = ("model.pt", "metrics.json")
    return _reading_runs(p, "regions", experiment, names, regions_figure_paths(experiment))


def cells(p: Params, experiment: str) -> list[Cell]:
    """Every setting of an experiment, in table order."""
    e = p.experiments[experiment]
    return [Cell(e.dataset, e.model, e.schedule, n, m, p.seeds) for n in e.noise for m in e.methods]


def runs(p: Params, experiment: str) -> list[Run]:
    """Every run of an experiment, in table order."""
    return [r for c in cells(p, experiment) for r in c.runs]


def jobs(p: Params) -> list[Job]:
    """Every job of the active profile, each once, in a fixed order."""
    out: dict[str, Job] = {}
    for name, exp in p.active_experiments.items():
        found = [prepare_job(p, exp.dataset)]
        found += [noise_job(p, exp.dataset, n, p.seeds) for n in exp.noise]
        for cell in cells(p, name):
            teacher = p.teacher_of(cell.method)
            if teacher:
                found.append(pretrain_job(p, teacher, cell.dataset, cell.noise, cell.seeds))
            found.append(train_job(p, cell))
        found.append(report_job(p, name))
        if exp.weights_figure:
            found.append(weights_job(p, name))
        if exp.regions_figure:
            found.append(regions_job(p, name))
        if exp.suspects:
            found.append(suspects_job(p, name))
        out.update((j.name, j) for j in found if j.name not in out)
    fidelity = fidelity_job(p)
    return [*out.values(), *([fidelity] if fidelity.deps else [])]


NAMED = {  # a wildcard or stage option -> the params.yaml section that defines its names
    "dataset": "datasets",
    "noise": "noise",
    "model": "models",
    "schedule": "schedules",
    "method": "methods",
    "teacher": "teachers",
    "experiment": "experiments",
}


def check_names(p: Params, names: dict, how: str = "{key} {value}") -> None:
    """ParamsError if a name (a stage's option or a target path's wildcard -> its value) is
    not an entry of its section of params.yaml: `how` says where it came from, and the
    message lists the known names, the closest first."""
    import difflib

    for key, value in names.items():
        if key not in NAMED or value is None:
            continue
        known = list(getattr(p, NAMED[key]))
        if value in known:
            continue
        close = difflib.get_close_matches(str(value), known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ParamsError(
            f"{how.format(key=key, value=value)}: no such entry in params.yaml "
            f"{NAMED[key]}{hint}; known: {', '.join(known)}"
        )


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
        return train_job(p, Cell(**args))
    make = {
        "prepare": prepare_job,
        "noise": noise_job,
        "pretrain": pretrain_job,
        "report": report_job,
        "weights": weights_job,
        "regions": regions_job,
        "fidelity": fidelity_job,
    }.get(stage)
    return make(p, **args) if make else None


def final_targets(p: Params) -> list[str]:
    """What `snakemake` builds: the tables and figures, and every committed output (the
    noise summaries too, which no later job reads)."""
    return [o for j in jobs(p) for o in j.committed]


def _dvc_outs(j: Job) -> dict[str, list]:
    """A stage's outputs as DVC sorts them: a table's numbers are `metrics` (dvc metrics
    show / diff), training curves and figures `plots` (dvc plots show), the rest `outs`."""
    kinds: dict[str, list] = {"outs": [], "metrics": [], "plots": []}
    for o in j.outs:
        props = {"cache": False} if o in j.committed else {}
        if o.startswith("results/tables/") and o.endswith(".json"):
            kinds["metrics"].append({o: props})
        elif o.endswith("history.json"):
            kinds["plots"].append({o: {**props, "x": "epoch", "y": "val_acc"}})
        elif o.endswith(".png"):
            kinds["plots"].append({o: props})
        else:
            kinds["outs"].append({o: props} if props else o)
    return {kind: entries for kind, entries in kinds.items() if entries}


def _dvc_params(p: Params, keys: tuple[str, ...]) -> list:
    """A stage's params as DVC reads them: params.yaml's keys bare, an included file's
    under its path."""
    by_file: dict[str, list[str]] = {}
    for key in keys:
        by_file.setdefault(p.file_of(key), []).append(key)
    bare = by_file.pop(PARAMS_FILE, [])
    return [*bare, *({path: found} for path, found in by_file.items())]


PARAMS_CHECKED = "results/params.checked"  # DVC's record that params.yaml passed the check


def dvc_yaml(p: Params) -> str:
    """dvc.yaml for the active profile (generated: edit params.yaml, then regenerate)."""
    import yaml

    # DVC runs no code of ours before a stage's command, so the first stage checks the whole
    # of params.yaml and every stage waits for it; its record never changes, so a rerun of
    # the check alone invalidates nothing.
    stages: dict = {
        "check": {
            "cmd": f"python -m pipeline check --record {PARAMS_CHECKED}",
            "deps": p.settings_files,
            "outs": [{PARAMS_CHECKED: {"cache": False}}],
        }
    }
    for j in jobs(p):
        stage: dict = {"cmd": j.cmd}
        stage["deps"] = [PARAMS_CHECKED, *j.deps]
        stage["params"] = _dvc_params(p, j.params)
        stage.update(_dvc_outs(j))
        stages[j.name] = stage
    header = (
        "# Generated by `python -m pipeline dvc-yaml` from params.yaml: do not edit.\n"
        "# The same commands as the Snakemake rules (tests/test_workflow.py checks it).\n"
    )
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=100)
