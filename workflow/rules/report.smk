# Tables and the figure of one experiment, from the metrics of all its runs.


rule report:
    input:
        lambda wc: plan.report_job(P, wc.experiment).deps,
    output:
        plan.table_paths("{experiment}"),
        plan.figure_path("{experiment}"),
    log:
        plan.log_path("report", "{experiment}"),
    conda:
        "../envs/pipeline.yaml"
    params:
        settings=lambda wc: settings(plan.report_job(P, wc.experiment)),
    shell:
        "python -m pipeline report --experiment {wildcards.experiment}"


rule weights:
    input:
        lambda wc: plan.weights_job(P, wc.experiment).deps,
    output:
        plan.weights_figure_path("{experiment}"),
    log:
        plan.log_path("weights", "{experiment}"),
    conda:
        "../envs/pipeline.yaml"
    params:
        settings=lambda wc: settings(plan.weights_job(P, wc.experiment)),
    shell:
        "python -m pipeline weights --experiment {wildcards.experiment}"


rule regions:
    input:
        lambda wc: plan.regions_job(P, wc.experiment).deps,
    output:
        plan.regions_figure_paths("{experiment}"),
    log:
        plan.log_path("regions", "{experiment}"),
    conda:
        "../envs/pipeline.yaml"
    params:
        settings=lambda wc: settings(plan.regions_job(P, wc.experiment)),
    shell:
        "python -m pipeline regions --experiment {wildcards.experiment}"


# fidelity.md would also match the report rule's pattern
ruleorder: fidelity > report


rule fidelity:
    input:
        plan.fidelity_job(P).deps,
    output:
        plan.FIDELITY_PATHS,
    log:
        plan.log_path("fidelity", "all"),
    conda:
        "../envs/pipeline.yaml"
    params:
        settings=lambda wc: settings(plan.fidelity_job(P)),
    shell:
        "python -m pipeline fidelity"
