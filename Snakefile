# ragtrain: post-training LLMs for retrieval-augmented generation.
# The config is the graph (see config/README.md); all logic lives in src/ragtrain.
from snakemake.utils import min_version

min_version("9.0")


# The demo's config unless one is given (--configfile / --config): a given config is
# not merged into the demo's, whose nodes would otherwise join its graph.
if not config:

    configfile: "config/config.yaml"


# common.smk checks the config (each node's keys against its kind, then the schema) and
# fills its defaults before any rule is read.
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/retrieval.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/products.smk"
include: "workflow/rules/backtracking.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
