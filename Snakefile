# Reproduce the active profile of params.yaml: `snakemake --cores N`.
# Every rule calls `python -m pipeline <stage>`, the same command as dvc.yaml; no stage logic
# lives here. Paths come from pipeline/plan.py.
import yaml

from snakemake.utils import validate

from pipeline import plan
from pipeline.config import parse as parse_params


configfile: "params.yaml"


validate(config, "workflow/schemas/params.schema.yaml")
with open("params.yaml") as f:
    if config != yaml.safe_load(f):
        raise ValueError(
            "settings come from params.yaml alone: edit it instead of --config"
        )
P = parse_params(config)  # the full check, before any job starts


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        plan.final_targets(P),
