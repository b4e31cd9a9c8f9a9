# Data: load a dataset once, then split and corrupt it per noise setting and seed.


rule prepare:
    output:
        plan.prepared_path("{dataset}"),
    log:
        plan.log_path("prepare", "{dataset}"),
    conda:
        "../envs/pipeline.yaml"
    params:
        settings=lambda wc: settings(plan.prepare_job(P, wc.dataset)),
    shell:
        "python -m pipeline prepare --dataset {wildcards.dataset}"


rule noise:
    input:
        plan.prepared_path("{dataset}"),
    output:
        plan.split_path("{dataset}", "{noise}", "{seed}"),
        plan.split_summary_path("{dataset}", "{noise}", "{seed}"),
    log:
        plan.log_path("noise", "{dataset}-{noise}-seed{seed}"),
    conda:
        "../envs/pipeline.yaml"
    params:
        settings=lambda wc: settings(
            plan.noise_job(P, wc.dataset, wc.noise, int(wc.seed))
        ),
    shell:
        "python -m pipeline noise --dataset {wildcards.dataset} --noise {wildcards.noise}"
        " --seed {wildcards.seed}"
