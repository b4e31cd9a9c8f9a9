# Shared by the rules: wildcard patterns and the params each job reads (a change reruns it).


wildcard_constraints:
    dataset=r"[A-Za-z][A-Za-z0-9_-]*",
    noise=r"[A-Za-z][A-Za-z0-9_-]*",
    method=r"[A-Za-z][A-Za-z0-9_-]*",
    experiment=r"[A-Za-z][A-Za-z0-9_-]*",
    model=r"[A-Za-z][A-Za-z0-9_-]*",
    schedule=r"[A-Za-z][A-Za-z0-9_-]*",
    teacher=r"[A-Za-z][A-Za-z0-9_-]*",


def named(wc):
    """The job's wildcards, each an entry of params.yaml: a misspelt target stops here with
    one line that lists the known names (as an input function's KeyError, Snakemake would
    print a traceback)."""
    try:
        plan.check_names(P, dict(wc.items()), "{key} {value!r} (in the target's path)")
    except ParamsError as e:
        sys.exit(f"error: {e}")
    return wc


def made(job, dataset):
    """A data stage's or train job's inputs, which the pipeline makes itself from params.yaml
    and packaged data (prepared data, splits, pretrained teachers); ancient where the job
    never ran in this checkout (no log: logs are not committed). Its outputs then came from
    git, dated by the checkout, and an input made here (same bytes) is newer without being
    different: without this, Snakemake 9 (which compares dates whatever --rerun-triggers
    says) would retrain all that reads it, hours for the translation chain. Once the job ran
    here, dates count again, with Snakemake's recorded checksums telling a regenerated input
    from a changed one (the profiles' max-checksum-file-size), and an upstream job that
    reruns reruns it. A user's own data keeps dates: a file edited by hand is newer."""
    if P.datasets[dataset].facts.user or os.path.exists(job.log):
        return list(job.deps)
    return [ancient(path) for path in job.deps]


def settings(job):
    """The params.yaml values a job depends on, for Snakemake's params rerun trigger."""
    return plan.param_values(P, job)


# A training job asks for a GPU only where its run can use one (run.device auto or cuda).
GPUS = 0 if P.run.device == "cpu" else 1

# What each job asks a cluster executor for (workflow/profiles/slurm; a profile's
# set-resources overrides any of it): (MB of memory, minutes) per rule, sized for the default
# profile's CPU jobs; train and pretrain get run.threads CPUs, the others one.
SIZES = {"train": (8000, 720), "pretrain": (8000, 720)}


def requests(rule, gpus=0):
    mem_mb, runtime = SIZES.get(rule, (4000, 60))
    out = {
        "mem_mb": mem_mb,
        "runtime": runtime,
        "cpus_per_task": P.run.threads if rule in SIZES else 1,
    }
    partition = (
        (P.cluster.gpu_partition or P.cluster.partition)
        if gpus
        else P.cluster.partition
    )
    if partition:
        out["slurm_partition"] = partition
    if P.cluster.account:
        out["slurm_account"] = P.cluster.account
    return out


CELL = plan.Cell.wildcards(P.seeds)  # a train job's paths: every seed of the profile
SEEDS = plan.seeds_arg(P.seeds)


def train_job(wc):
    """The plan's train job for a setting's wildcards (its inputs depend on the dataset)."""
    named(wc)
    return plan.train_job(
        P, plan.Cell(wc.dataset, wc.model, wc.schedule, wc.noise, wc.method, P.seeds)
    )


def paper(wc):
    """The report category of an experiment's outputs: the paper it reproduces."""
    return plan.paper_of(wc.experiment)


def report_inputs(wc):
    """The runs' metrics and histories, and their splits' summaries, read only for the number
    of classes (chance, for a collapse), which cannot change unless the runs do: ancient, so a
    noise job that writes them again (same bytes) reruns no report."""
    return [
        ancient(d) if d.startswith(plan.SPLIT_SUMMARIES + "/") else d
        for d in plan.report_job(P, named(wc).experiment).deps
    ]
