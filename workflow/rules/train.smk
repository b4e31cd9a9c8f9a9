# Train one run and score it on the test split (one process: one torch start-up per run). A run is identified by what determines its
# result (dataset, model, schedule, noise, method, seed), so experiments share runs.


rule train:
    input:
        lambda wc: run_job("train")(wc).deps,
    output:
        plan.WILDCARDS.file("model.pt"),
        plan.WILDCARDS.file("history.json"),
        plan.WILDCARDS.file("metrics.json"),
    log:
        plan.log_path("train", plan.WILDCARDS.name),
    conda:
        "../envs/pipeline.yaml"
    threads: P.run.threads
    resources:
        gpu=1,
    params:
        settings=lambda wc: settings(run_job("train")(wc)),
    shell:
        "python -m pipeline train --dataset {wildcards.dataset} --model {wildcards.model}"
        " --schedule {wildcards.schedule} --noise {wildcards.noise}"
        " --method {wildcards.method} --seed {wildcards.seed}"
