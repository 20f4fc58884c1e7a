# Config access and input functions: names in the config resolve to paths here.
import json
import re
import shlex
import sys
from pathlib import Path

SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))

from snakemake.utils import validate

from ragtrain.graph.config import (
    SCHEMA,
    ConfigError,
    ConfigFileError,
    check_config,
    load_config_file,
    missing_paths,
    prepare,
    templates_read,
)
from ragtrain.generation.strategies import searches_of
from ragtrain.graph.kinds import (
    INDEXED_RETRIEVERS,
    LANGUAGE_MODELS,
    LLM_KINDS,
    NO_RETRIEVAL,
    OUTSIDE_JOB_KEYS,
    RETRIEVER_MODELS,
    SOURCE_RETRIEVAL,
    kind_of,
)
from ragtrain.graph.cluster import JOB_KEYS, job_resources, launch_args
from ragtrain.launch import SCHEDULER_ENV, scheduler_id
from ragtrain.judges.rules import RULES
from ragtrain.metrics.paired import RESAMPLES
from ragtrain.training.rewards import nli_judges, rank_retrievers, reward_models

PROMPTS = Path(workflow.basedir) / "resources" / "prompts"

# Before the first job, one line naming the key (or file:line): the config files read
# again strictly (a key given twice), names, a key foreign to its node's kind (the
# schema's key lists are per section), the schema's types (strictly: 2 is an integer,
# 2.0 is not), the schema's defaults, then the graph. The files and folders the config
# names must exist (in a dry run, a missing one is a warning: plans are made ahead).
try:
    for _file in workflow.configfiles:
        if Path(_file).is_file():
            load_config_file(_file)
    check_config(config)
    validate(config, str(SCHEMA), set_default=True)
    CFG = prepare(config, prompts_dir=PROMPTS)
    # (Snakemake chooses its dry-run executor after reading the Snakefile: the flag is
    # read from the command line.)
    _dry_run = any(
        a in ("--dry-run", "--dryrun") or re.fullmatch(r"-[A-Za-z]*n[A-Za-z]*", a)
        for a in sys.argv[1:]
    )
    for _missing in missing_paths(CFG):
        if not _dry_run:
            raise _missing
        print(f"warning: {_missing}", file=sys.stderr)
except (ConfigError, ConfigFileError) as error:
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
    # The Snakemake process that runs the job: its stage ends when it does (ragtrain.launch).
    f"export {SCHEDULER_ENV}={shlex.quote(scheduler_id())}; "
)


def names(section, *kinds):
    """A wildcard constraint matching exactly the config's names in a section (of these kinds)."""
    chosen = [n for n, v in CFG[section].items() if not kinds or v.get("kind") in kinds]
    return "|".join(sorted(chosen)) or "^$"


RETRIEVAL_EVALUATIONS = {
    (ev["retriever"], ev["dataset"], ev["split"]): ev
    for ev in CFG["retrieval_evaluations"]
}


wildcard_constraints:
    world=names("worlds"),
    corpus=names("corpora"),
    retriever=names("retrievers"),
    dataset=names("datasets"),
    model=names("models"),
    product=names("products"),
    retrieval="|".join([*sorted(CFG["retrievers"]), NO_RETRIEVAL, SOURCE_RETRIEVAL]),
    # what a retrieval evaluation ranks with: a retriever or a trained retriever model
    ranker="|".join(sorted({r for r, _, _ in RETRIEVAL_EVALUATIONS})) or "^$",
    split="[A-Za-z0-9_-]+",


def node(section, name, drop=()):
    """A node's config as one JSON string: passed as `params` so that a change reruns it.
    Its `resources` are left out (more memory or another partition changes no result), and
    its `export` settings (another rule writes the export)."""
    dropped = {*OUTSIDE_JOB_KEYS, *drop}
    settings = {k: v for k, v in CFG[section][name].items() if k not in dropped}
    return json.dumps(settings, sort_keys=True)


def resources_of(stage, node_of):
    """A rule's resources (ragtrain.graph.cluster): for each of Snakemake's names, the value
    for a job's node (`node_of(wildcards)`), its memory and time growing per attempt.
    `stage` (train, generate, cpu) names the defaults; a function of the node gives it
    per job. Names a job does not set are None, which Snakemake leaves unset."""

    def one(key):
        def value(wildcards, attempt):
            node = node_of(wildcards)
            job = stage(node) if callable(stage) else stage
            defaults = CFG.get("resources", {}).get(job)
            return job_resources(node.get("resources"), job, attempt, defaults).get(key)

        return value

    return {key: one(key) for key in JOB_KEYS}


def node_resources(section):
    """A node's job resources, by what its kind's job needs (the kind registry)."""
    wildcard = section[:-1]
    return resources_of(
        lambda node: kind_of(section, node).job,
        lambda w: CFG[section][getattr(w, wildcard)],
    )


def stage_of(section):
    """A job's stage (`python -m ragtrain <stage>`), from its node's kind."""
    wildcard = section[:-1]
    return lambda w: kind_of(section, CFG[section][getattr(w, wildcard)]).stage


def launch(w):
    """`ragtrain.launch` arguments of a training job: its GPUs per node and nodes."""
    given = CFG["models"][w.model].get("resources")
    return shlex.join(
        launch_args(given, "train", CFG.get("resources", {}).get("train"))
    )


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
    if source.get("from"):
        return product_file(source["from"], "examples.jsonl")
    return source["path"]


def task_input(w):
    """A retrieval task's source (world entities or a BEIR folder) and its corpus (with
    its tables: the judged passages' ids are looked up in them)."""
    source = CFG["datasets"][w.dataset]
    inputs = {
        "corpus": corpus_file(source["corpus"]),
        "tables": corpus_tables(source["corpus"]),
    }
    if source.get("world"):
        inputs["entities"] = f"{RESULTS}/worlds/{source['world']}/entities.jsonl"
    else:
        inputs["folder"] = source["path"]
    return inputs


def corpus_file(corpus):
    return f"{RESULTS}/corpus/{corpus}/corpus.jsonl"


def task_files(dataset):
    """The corpus (with its tables: the stages read passages by id and row), queries and
    qrels folder of a retrieval task (a BEIR dataset)."""
    corpus = CFG["datasets"][dataset]["corpus"]
    return {
        "corpus": corpus_file(corpus),
        "tables": corpus_tables(corpus),
        "queries": f"{RESULTS}/data/{dataset}/queries.jsonl",
        "qrels": f"{RESULTS}/data/{dataset}/qrels",
    }


def corpus_tables(corpus):
    """The corpus stage's offsets and id tables beside its corpus.jsonl."""
    return [
        f"{RESULTS}/corpus/{corpus}/corpus.{table}.npy" for table in ("offsets", "ids")
    ]


def index_input(w):
    """A retriever's corpus and its tables (linked into the index: stored once)."""
    corpus = CFG["retrievers"][w.retriever]["corpus"]
    return {"corpus": corpus_file(corpus), "tables": corpus_tables(corpus)}


def model_dir(name):
    return f"{RESULTS}/models/{name}"


def gguf_file(name):
    return f"{RESULTS}/exports/{name}.gguf"


def reranker_data(model):
    """A reranker's records: its doc_preferences product's train and dev splits, or a
    DPA-RAG file."""
    node = CFG["models"][model]
    if node.get("data"):
        return [
            product_file(node["data"], f"{split}.jsonl") for split in ("train", "dev")
        ]
    return [node["path"]]


def reranker_input(retriever):
    """A rerank retriever's trained reranker (none: the untrained encoder)."""
    name = CFG["retrievers"][retriever].get("reranker")
    return [model_dir(name)] if name else []


def examples_path(dataset, retrieval):
    # Closed book and the dataset's own documents (`source_docs`) read the dataset's
    # examples; the stage then drops or attaches the documents.
    if retrieval in (NO_RETRIEVAL, SOURCE_RETRIEVAL):
        return f"{RESULTS}/data/{dataset}/examples.jsonl"
    return f"{RESULTS}/retrieval/{retrieval}/{dataset}/examples.jsonl"


def eval_nli(w):
    """The NLI judge of an evaluation's citation and claim metrics (none: not scored)."""
    return [evaluation(w)["nli"]] if evaluation(w).get("nli") else []


def eval_examples(w):
    return examples_path(w.dataset, w.retrieval)


def prompt_path(name):
    return str(PROMPTS / f"{name}.jinja")


def eval_prompt(w):
    return prompt_path(evaluation(w)["prompt"])


def product(w):
    return CFG["products"][w.product]


def product_templates(w):
    """The templates a product reads beside its `prompt` (strategies, prompt search)."""
    return [prompt_path(name) for name in templates_read(product(w))]


def strategy_searches(w):
    """The prompt searches a self-demos product's strategies take their prompts from."""
    return {
        name: product_file(name, "data.jsonl")
        for name in searches_of(product(w)["strategies"] or [])
    }


def named_args(option, paths):
    """`--option NAME=PATH ...`, or `--option PATH ...` for a list."""
    items = paths.items() if isinstance(paths, dict) else [(None, p) for p in paths]
    return " ".join(
        f"{option} {shlex.quote(p if n is None else f'{n}={p}')}" for n, p in items
    )


def product_file(name, file):
    return f"{RESULTS}/products/{name}/{file}"


def work_root(section, name):
    """Resumable state (shards, checkpoints) of a node: not a declared output."""
    return f"{RESULTS}/work/{section}/{name}"


def training_input(w, split):
    data = CFG["models"][w.model]["data"]
    if CFG["products"][data]["kind"] == "judge":
        # Judged samples (a kto model's data): one file, each question marked train or
        # dev; the stage reads its split's.
        return product_file(data, "data.jsonl")
    return product_file(data, f"{split}.jsonl")


def trained_models():
    """Trained LLMs and reward models (their curves go to the report)."""
    return sorted(
        n
        for n, m in CFG["models"].items()
        if m["kind"] in LLM_KINDS or m["kind"] == "reward_model"
    )


def nli_node(name):
    """An NLI judge's node for its stage, with the folder of its model as `path`."""
    node = CFG["judges"][name]
    return {
        **node,
        "path": model_dir(node["model"]) if node.get("model") else node["path"],
    }


def nli_dirs(names):
    """The folders of the NLI judges' models that are nodes of this config."""
    return [
        model_dir(CFG["judges"][n]["model"])
        for n in names
        if CFG["judges"][n].get("model")
    ]


def nli_args(names):
    nodes = {n: nli_node(n) for n in names}
    return f"--nli {shlex.quote(json.dumps(nodes, sort_keys=True))}" if nodes else ""


def reward_inputs(node):
    """The folders a node's `rewards` sources read: reward models, NLI judges' models,
    the retrievers that rank passages (retrieval_rank)."""
    specs = node.get("rewards", [])
    return (
        [model_dir(m) for m in reward_models(specs)]
        + nli_dirs(nli_judges(specs))
        + [model_dir(r) for r in rank_retrievers(specs)]
    )


def reward_args(node):
    specs = node.get("rewards", [])
    return " ".join(
        [
            *(
                f"--reward-model {shlex.quote(f'{m}={model_dir(m)}')}"
                for m in reward_models(specs)
            ),
            *(
                f"--retriever {shlex.quote(f'{r}={model_dir(r)}')}"
                for r in rank_retrievers(specs)
            ),
            nli_args(nli_judges(specs)),
        ]
    ).strip()


def rl_prompt_inputs(w):
    """An RL model's prompts: a QA dataset's examples (with its retrieval's documents),
    or a BEIR task's corpus and qrels (ppo of a query writer over passages)."""
    node = CFG["models"][w.model]
    if CFG["datasets"][node["dataset"]]["kind"] == "beir":
        files = task_files(node["dataset"])
        return {k: files[k] for k in ("corpus", "tables", "qrels")}
    return {"examples": examples_path(node["dataset"], node["retrieval"])}


def rl_prompt_args(w, input):
    if "examples" in input.keys():
        return f"--examples {shlex.quote(input.examples)}"
    return f"--corpus {shlex.quote(input.corpus)} --qrels {shlex.quote(input.qrels)}"


def retriever_models():
    return sorted(n for n, m in CFG["models"].items() if m["kind"] in RETRIEVER_MODELS)


def reranker_models():
    return sorted(n for n, m in CFG["models"].items() if m["kind"] == "reranker")


def rankers(colbert):
    """A constraint matching the evaluated rankers that are (or are not) ColBERT models."""
    chosen = {
        r
        for r, _, _ in RETRIEVAL_EVALUATIONS
        if (CFG["models"].get(r, {}).get("kind") == "colbert") == colbert
    }
    return "|".join(sorted(chosen)) or "^$"


def retrieval_evaluation(w):
    return RETRIEVAL_EVALUATIONS[(w.ranker, w.dataset, w.split)]


def retrieval_eval_file(retriever, dataset, split, file):
    return f"{RESULTS}/eval_retrieval/{retriever}/{dataset}/{split}/{file}"


def retrieval_eval_input(w):
    """What a retrieval evaluation ranks with: an index of the retrievers section, or a
    trained retriever (a ColBERT reranks the run of its `candidates` retriever)."""
    inputs = task_files(w.dataset)
    if w.ranker in CFG["retrievers"]:
        inputs["index"] = f"{RESULTS}/index/{w.ranker}"
    else:
        inputs["model"] = model_dir(w.ranker)
        if CFG["models"][w.ranker]["kind"] == "colbert":
            candidates = CFG["models"][w.ranker]["candidates"]
            inputs["candidates"] = retrieval_eval_file(
                candidates, w.dataset, w.split, "run.trec"
            )
    return inputs


def retrieval_metrics():
    return [
        retrieval_eval_file(r, d, s, "metrics.json")
        for r, d, s in RETRIEVAL_EVALUATIONS
    ]


def retriever_pairs():
    """The retriever pairs the report compares (`evaluate_retrieval` entries' `paired`),
    each with its two run files and its split's qrels (TSV)."""
    return [
        {
            **{k: pair[k] for k in ("dataset", "split", "a", "b")},
            **{
                f"run_{side}": retrieval_eval_file(
                    pair[side], pair["dataset"], pair["split"], "run.trec"
                )
                for side in ("a", "b")
            },
            "qrels": f"{task_files(pair['dataset'])['qrels']}/{pair['split']}.tsv",
        }
        for pair in CFG["retrieval_pairs"]
    ]


def retriever_pair_input():
    """What the report's retriever pairs read: their run files and tasks' qrels folders."""
    pairs = retriever_pairs()
    runs = {pair[f"run_{side}"] for pair in pairs for side in ("a", "b")}
    qrels = {task_files(pair["dataset"])["qrels"] for pair in pairs}
    return sorted(runs) + sorted(qrels)


def query_files(names):
    return [product_file(n, "data.jsonl") for n in names]


def product_stats():
    """Every product, for the report: a product nothing trains on is still made."""
    return [product_file(n, "stats.json") for n in sorted(CFG["products"])]


def eval_metrics():
    """Every evaluation's metrics, and those of its model judges where it names any."""
    return [
        f"{RESULTS}/eval/{m}/{d}/{r}/{sub}metrics.json"
        for (m, d, r), ev in EVALUATIONS.items()
        for sub in ("", *(("judged/",) if ev.get("judges") else ()))
    ]


def is_model_judge(name):
    return CFG["judges"][name]["kind"] != RULES


def judge_node(name):
    """A model judge's node for its stage: its keys, its name, its raw-output cache."""
    node = {**CFG["judges"][name], "name": name}
    return json.dumps(
        {**node, "cache": f"{RESULTS}/cache/judges/{name}.jsonl"}, sort_keys=True
    )


def judge_input(name):
    """The files a model judge reads: its model and its template."""
    node = CFG["judges"][name]
    return {
        "judge_model": model_dir(node["model"]),
        "judge_prompt": prompt_path(node["prompt"]),
    }


def judge_products(by_model):
    """A wildcard constraint: the judge products labelled by a model (or by the rules)."""
    chosen = [
        name
        for name, node in CFG["products"].items()
        if node["kind"] == "judge"
        and is_model_judge(node.get("judge", RULES)) == by_model
    ]
    return "|".join(sorted(chosen)) or "^$"


def judged_evaluation_input(w):
    """An evaluation's answers, its rules' metrics, and its model judges' inputs."""
    judges = evaluation(w)["judges"]
    run = f"{RESULTS}/eval/{w.model}/{w.dataset}/{w.retrieval}"
    inputs = {
        "predictions": f"{run}/predictions.jsonl",
        "metrics": f"{run}/metrics.json",
    }
    if is_model_judge(judges["label"]):
        inputs.update(judge_input(judges["label"]))
    if is_model_judge(judges["relevance"]) and w.retrieval != NO_RETRIEVAL:
        inputs["relevance"] = relevance_file(
            judges["relevance"], w.dataset, w.retrieval
        )
    return inputs


def relevance_file(judge, dataset, retrieval):
    return f"{RESULTS}/judged/{judge}/{dataset}/{retrieval}/relevance.jsonl"


def retrieval_stats():
    """The retrieval of every evaluation, and every rerank retriever on every evaluated
    dataset: the report sets each against its first stage."""
    pairs = {
        (r, d) for _, d, r in EVALUATIONS if r not in (NO_RETRIEVAL, SOURCE_RETRIEVAL)
    }
    datasets = {d for _, d, _ in EVALUATIONS}
    pairs |= {
        (r, d)
        for r, node in CFG["retrievers"].items()
        if node["kind"] == "rerank"
        for d in datasets
    }
    return [f"{RESULTS}/retrieval/{r}/{d}/stats.json" for r, d in sorted(pairs)]


def node_outputs():
    """One output of every node's job (and of the retrieval its data is sampled with).

    Snakemake rebuilds a missing file only when it is a target or the input of a job
    that runs: a model deleted by hand, or by a forced rerun killed halfway, would
    otherwise stay missing under its up-to-date consumers. As targets they are rebuilt
    (from their work folders' checkpoints), and what reads them is redone after them."""
    outputs = [f"{RESULTS}/worlds/{w}/stats.json" for w in CFG["worlds"]]
    outputs += [corpus_file(c) for c in CFG["corpora"]]
    outputs += [
        f"{RESULTS}/index/{r}"
        for r, node in CFG["retrievers"].items()
        if node["kind"] in INDEXED_RETRIEVERS
    ]
    outputs += [f"{RESULTS}/data/{d}/stats.json" for d in CFG["datasets"]]
    outputs += [model_dir(m) for m in CFG["models"]]
    outputs += [
        gguf_file(m) for m, n in CFG["models"].items() if n.get("export") == "gguf"
    ]
    outputs += product_stats()
    sampled = {
        (node["retrieval"], node["dataset"])
        for section in ("products", "models")
        for node in CFG[section].values()
        if node.get("retrieval") in CFG["retrievers"]
        and CFG["datasets"].get(node.get("dataset"), {}).get("kind") == "qa"
    }
    outputs += [f"{RESULTS}/retrieval/{r}/{d}/stats.json" for r, d in sorted(sampled)]
    return outputs


def all_targets():
    return [f"{RESULTS}/report/summary.md", *node_outputs()]
