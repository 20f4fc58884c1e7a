# Config access and input functions: names in the config resolve to paths here.
import json
import shlex
import sys
from pathlib import Path

SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))

from ragtrain.config import NO_RETRIEVAL, ConfigError, prepare

PROMPTS = Path(workflow.basedir) / "resources" / "prompts"

try:
    CFG = prepare(config, prompts_dir=PROMPTS)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

RUN = CFG["run"]
RESULTS = f"results/{RUN}"
LOGS = f"logs/{RUN}"
# Rules run `python -m ragtrain` from this checkout: with the interpreter that runs
# Snakemake (the venv's), or under `--sdm conda` with each rule's own env.
_uses_conda = "conda" in {
    m.name.lower() for m in workflow.deployment_settings.deployment_method
}
_path = (
    ""
    if _uses_conda
    else f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
)
shell.prefix(
    f"set -euo pipefail; {_path}"
    # (doubled braces: Snakemake formats the prefix too)
    f"export PYTHONPATH={shlex.quote(str(SRC))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


def names(section, *kinds):
    """A wildcard constraint matching exactly the config's names in a section (of these kinds)."""
    chosen = [n for n, v in CFG[section].items() if not kinds or v.get("kind") in kinds]
    return "|".join(sorted(chosen)) or "^$"


wildcard_constraints:
    world=names("worlds"),
    corpus=names("corpora"),
    retriever=names("retrievers"),
    dataset=names("datasets"),
    model=names("models"),
    product=names("products"),
    retrieval="|".join([*sorted(CFG["retrievers"]), NO_RETRIEVAL]),


def node(section, name, drop=()):
    """A node's config as one JSON string: passed as `params` so that a change reruns it."""
    settings = {k: v for k, v in CFG[section][name].items() if k not in drop}
    return json.dumps(settings, sort_keys=True)


EVALUATIONS = {
    (ev["model"], ev["dataset"], ev["retrieval"]): ev for ev in CFG["evaluations"]
}


def evaluation(w):
    return EVALUATIONS[(w.model, w.dataset, w.retrieval)]


def corpus_input(w):
    source = CFG["corpora"][w.corpus]
    if source.get("world"):
        return f"{RESULTS}/worlds/{source['world']}/corpus.jsonl"
    return source["path"]


def dataset_input(w):
    source = CFG["datasets"][w.dataset]
    if source.get("world"):
        return f"{RESULTS}/worlds/{source['world']}/questions.jsonl"
    return source["path"]


def index_input(w):
    corpus = CFG["retrievers"][w.retriever]["corpus"]
    return f"{RESULTS}/corpus/{corpus}/corpus.jsonl"


def model_dir(name):
    return f"{RESULTS}/models/{name}"


def examples_path(dataset, retrieval):
    if retrieval == NO_RETRIEVAL:
        return f"{RESULTS}/data/{dataset}/examples.jsonl"
    return f"{RESULTS}/retrieval/{retrieval}/{dataset}/examples.jsonl"


def eval_examples(w):
    return examples_path(w.dataset, w.retrieval)


def prompt_path(name):
    return str(PROMPTS / f"{name}.jinja")


def eval_prompt(w):
    return prompt_path(evaluation(w)["prompt"])


def product(w):
    return CFG["products"][w.product]


def product_file(name, file):
    return f"{RESULTS}/products/{name}/{file}"


def work_root(section, name):
    """Resumable state (shards, checkpoints) of a node: not a declared output."""
    return f"{RESULTS}/work/{section}/{name}"


def training_input(w, split):
    return product_file(CFG["models"][w.model]["data"], f"{split}.jsonl")


def trained_models():
    return sorted(n for n, m in CFG["models"].items() if m["kind"] != "base")


def product_stats():
    """Every product, for the report: a product nothing trains on is still made."""
    return [product_file(n, "stats.json") for n in sorted(CFG["products"])]


def eval_metrics():
    return [f"{RESULTS}/eval/{m}/{d}/{r}/metrics.json" for m, d, r in EVALUATIONS]


def retrieval_stats():
    pairs = {(r, d) for _, d, r in EVALUATIONS if r != NO_RETRIEVAL}
    return [f"{RESULTS}/retrieval/{r}/{d}/stats.json" for r, d in sorted(pairs)]


def all_targets():
    return [f"{RESULTS}/report/summary.md"]
