# Tables and the figure of one experiment, from the metrics of all its runs. Every output is
# in `snakemake --report`, under its paper (plan.paper_of), with a caption from workflow/report.


rule report:
    input:
        report_inputs,
    output:
        report(
            plan.table_paths("{experiment}")[0],
            caption="../report/table.rst",
            category=paper,
            subcategory="{experiment}",
        ),
        plan.table_paths("{experiment}")[1],
        plan.metrics_path("{experiment}"),
        report(
            plan.figure_path("{experiment}"),
            caption="../report/figure.rst",
            category=paper,
            subcategory="{experiment}",
        ),
    log:
        plan.log_path("report", "{experiment}"),
    benchmark:
        plan.benchmark_path("report", "{experiment}")
    wildcard_constraints:
        experiment=r"(?!fidelity\.)[A-Za-z][A-Za-z0-9_-]*",  # fidelity.md: the fidelity rule
    conda:
        "../envs/pipeline.yaml"
    resources:
        **requests("report"),
    params:
        settings=lambda wc: settings(plan.report_job(P, named(wc).experiment)),
    shell:
        "python -m pipeline report --experiment {wildcards.experiment}"


rule weights:
    input:
        lambda wc: plan.weights_job(P, named(wc).experiment).deps,
    output:
        report(
            plan.weights_figure_path("{experiment}"),
            caption="../report/weights.rst",
            category=paper,
            subcategory="{experiment}",
        ),
    log:
        plan.log_path("weights", "{experiment}"),
    benchmark:
        plan.benchmark_path("weights", "{experiment}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **requests("weights"),
    params:
        settings=lambda wc: settings(plan.weights_job(P, named(wc).experiment)),
    shell:
        "python -m pipeline weights --experiment {wildcards.experiment}"


rule regions:
    input:
        lambda wc: plan.regions_job(P, named(wc).experiment).deps,
    output:
        report(
            plan.regions_figure_paths("{experiment}")[0],
            caption="../report/regions.rst",
            category=paper,
            subcategory="{experiment}",
        ),
        report(
            plan.regions_figure_paths("{experiment}")[1],
            caption="../report/cosine.rst",
            category=paper,
            subcategory="{experiment}",
        ),
    log:
        plan.log_path("regions", "{experiment}"),
    benchmark:
        plan.benchmark_path("regions", "{experiment}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **requests("regions"),
    params:
        settings=lambda wc: settings(plan.regions_job(P, named(wc).experiment)),
    shell:
        "python -m pipeline regions --experiment {wildcards.experiment}"


rule suspects:
    input:
        lambda wc: plan.suspects_job(P, named(wc).experiment).deps,
    output:
        report(
            plan.suspects_paths("{experiment}")[0],
            caption="../report/suspects.rst",
            category=paper,
            subcategory="{experiment}",
        ),
        plan.suspects_paths("{experiment}")[1],
        report(
            plan.suspects_paths("{experiment}")[2],
            caption="../report/suspects_figure.rst",
            category=paper,
            subcategory="{experiment}",
        ),
    log:
        plan.log_path("suspects", "{experiment}"),
    benchmark:
        plan.benchmark_path("suspects", "{experiment}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **requests("suspects"),
    params:
        settings=lambda wc: settings(plan.suspects_job(P, named(wc).experiment)),
    shell:
        "python -m pipeline suspects --experiment {wildcards.experiment}"


rule fidelity:
    input:
        plan.fidelity_job(P).deps,
    output:
        report(
            plan.FIDELITY_PATHS[0],
            caption="../report/fidelity.rst",
            category="1. Fidelity to the papers",
        ),
        plan.FIDELITY_PATHS[1],
    log:
        plan.log_path("fidelity", "all"),
    benchmark:
        plan.benchmark_path("fidelity", "all")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **requests("fidelity"),
    params:
        settings=lambda wc: settings(plan.fidelity_job(P)),
    shell:
        "python -m pipeline fidelity"
