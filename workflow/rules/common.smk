# Shared by the rules: wildcard patterns and the params each job reads (a change reruns it).


wildcard_constraints:
    dataset=r"[A-Za-z][A-Za-z0-9_-]*",
    noise=r"[A-Za-z][A-Za-z0-9_-]*",
    method=r"[A-Za-z][A-Za-z0-9_-]*",
    experiment=r"[A-Za-z][A-Za-z0-9_-]*",
    model=r"[A-Za-z][A-Za-z0-9_-]*",
    schedule=r"[A-Za-z][A-Za-z0-9_-]*",
    teacher=r"[A-Za-z][A-Za-z0-9_-]*",


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
    return plan.train_job(
        P, plan.Cell(wc.dataset, wc.model, wc.schedule, wc.noise, wc.method, P.seeds)
    )


def paper(wc):
    """The report category of an experiment's outputs: the paper it reproduces."""
    return plan.paper_of(wc.experiment)
