# Reproduce the active profile of params.yaml:
# `snakemake --workflow-profile workflow/profiles/default --cores N`.
# Every rule calls `python -m pipeline <stage>`, the same command as dvc.yaml; no stage logic
# lives here. Paths come from pipeline/plan.py.
import os
import sys

from pipeline import plan
from pipeline.config import ParamsError, load as load_params, read_yaml

# The full check of params.yaml (strict YAML, types, ranges, references), before any job
# starts; a mistake is one line naming the dotted key, not a traceback.
try:
    P = load_params("params.yaml")
except ParamsError as e:
    sys.exit(f"error: {e}")


configfile: "params.yaml"


if config != read_yaml("params.yaml"):
    raise ValueError(
        "settings come from params.yaml (and the files it includes) alone: edit it instead "
        "of --config"
    )


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        plan.final_targets(P),
