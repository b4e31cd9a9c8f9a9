# Data: load a dataset once, then split and corrupt it per noise setting (all seeds).


rule prepare:
    input:
        lambda wc: plan.prepare_job(P, named(wc).dataset).deps,
    output:
        plan.prepared_path("{dataset}"),
    log:
        plan.log_path("prepare", "{dataset}"),
    benchmark:
        plan.benchmark_path("prepare", "{dataset}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **requests("prepare"),
    params:
        settings=lambda wc: settings(plan.prepare_job(P, wc.dataset)),
    shell:
        "python -m pipeline prepare --dataset {wildcards.dataset}"


rule noise:
    input:
        lambda wc: made(
            plan.noise_job(P, named(wc).dataset, wc.noise, P.seeds), wc.dataset
        ),
    output:
        plan.split_outputs("{dataset}", "{noise}", P.seeds),
    log:
        plan.log_path("noise", "{dataset}-{noise}"),
    benchmark:
        plan.benchmark_path("noise", "{dataset}-{noise}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **requests("noise"),
    params:
        settings=lambda wc: settings(plan.noise_job(P, wc.dataset, wc.noise, P.seeds)),
        seeds=SEEDS,
    shell:
        "python -m pipeline noise --dataset {wildcards.dataset} --noise {wildcards.noise}"
        " --seeds {params.seeds}"
