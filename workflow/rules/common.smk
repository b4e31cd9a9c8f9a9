# Shared by the rules: wildcard patterns and the params each job reads (a change reruns it).


wildcard_constraints:
    dataset=r"[A-Za-z][A-Za-z0-9_-]*",
    noise=r"[A-Za-z][A-Za-z0-9_-]*",
    method=r"[A-Za-z][A-Za-z0-9_-]*",
    experiment=r"[A-Za-z][A-Za-z0-9_-]*",
    model=r"[A-Za-z][A-Za-z0-9_-]*",
    schedule=r"[A-Za-z][A-Za-z0-9_-]*",
    seed=r"\d+",


def settings(job):
    """The params.yaml values a job depends on, for Snakemake's params rerun trigger."""
    return plan.param_values(P, job)


def run_job(stage):
    """The plan's job for a run's wildcards (its inputs depend on the dataset)."""
    return lambda wc: getattr(plan, f"{stage}_job")(
        P,
        plan.Run(wc.dataset, wc.model, wc.schedule, wc.noise, wc.method, int(wc.seed)),
    )
