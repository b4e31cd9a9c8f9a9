# Train every seed of one setting and score each model on the test split (one process: one
# torch start-up per setting). A run is identified by what determines its result (dataset,
# model, schedule, noise, method, seed), so experiments share runs.


rule train:
    input:
        lambda wc: made(train_job(wc), wc.dataset),
    output:
        CELL.outputs,
    log:
        plan.log_path("train", CELL.name),
    benchmark:
        plan.benchmark_path("train", CELL.name)
    conda:
        "../envs/pipeline.yaml"
    threads: P.run.threads
    resources:
        **requests("train", GPUS),
        gpu=GPUS,
    params:
        settings=lambda wc: settings(train_job(wc)),
        seeds=SEEDS,
    shell:
        "python -m pipeline train --dataset {wildcards.dataset} --model {wildcards.model}"
        " --schedule {wildcards.schedule} --noise {wildcards.noise}"
        " --method {wildcards.method} --seeds {params.seeds}"


# Pretrain a teacher that a method names (params.yaml `teachers`) on every seed's split; each
# method and experiment that needs it reuses the same models.
rule pretrain:
    input:
        lambda wc: made(
            plan.pretrain_job(P, named(wc).teacher, wc.dataset, wc.noise, P.seeds),
            wc.dataset,
        ),
    output:
        plan.pretrain_outputs("{teacher}", "{dataset}", "{noise}", P.seeds),
    log:
        plan.log_path("pretrain", "{teacher}-{dataset}-{noise}"),
    benchmark:
        plan.benchmark_path("pretrain", "{teacher}-{dataset}-{noise}")
    conda:
        "../envs/pipeline.yaml"
    threads: P.run.threads
    resources:
        **requests("pretrain", GPUS),
        gpu=GPUS,
    params:
        settings=lambda wc: settings(
            plan.pretrain_job(P, named(wc).teacher, wc.dataset, wc.noise, P.seeds)
        ),
        seeds=SEEDS,
    shell:
        "python -m pipeline pretrain --teacher {wildcards.teacher} --dataset {wildcards.dataset}"
        " --noise {wildcards.noise} --seeds {params.seeds}"
