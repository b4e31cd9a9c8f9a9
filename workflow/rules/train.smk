# Train one run, then score it on the test split.


rule train:
    input:
        lambda wc: run_job("train")(wc).deps,
    output:
        plan.run_file("{experiment}", "{noise}", "{method}", "{seed}", "model.pt"),
        plan.run_file("{experiment}", "{noise}", "{method}", "{seed}", "history.json"),
    log:
        plan.log_path("train", "{experiment}-{noise}-{method}-seed{seed}"),
    conda:
        "../envs/pipeline.yaml"
    threads: P.run.threads
    resources:
        gpu=1,
    params:
        settings=lambda wc: settings(run_job("train")(wc)),
    shell:
        "python -m pipeline train --experiment {wildcards.experiment}"
        " --noise {wildcards.noise} --method {wildcards.method} --seed {wildcards.seed}"


rule evaluate:
    input:
        lambda wc: run_job("evaluate")(wc).deps,
    output:
        plan.run_file("{experiment}", "{noise}", "{method}", "{seed}", "metrics.json"),
    log:
        plan.log_path("evaluate", "{experiment}-{noise}-{method}-seed{seed}"),
    conda:
        "../envs/pipeline.yaml"
    params:
        settings=lambda wc: settings(run_job("evaluate")(wc)),
    shell:
        "python -m pipeline evaluate --experiment {wildcards.experiment}"
        " --noise {wildcards.noise} --method {wildcards.method} --seed {wildcards.seed}"
