"""The pseudo-query recipe (SPTAR-style): a `pseudo_query:` block expanded into plain nodes.

Pseudo-query augmentation of a retriever: a small LLM fine-tuned to write queries for
passages (doc -> query SFT on a task's few gold pairs) writes queries for unlabelled
passages; BM25, dense and LossNet filters keep the useful ones; bi-encoders (and
optionally a ColBERT) train on gold plus kept queries; rounds repeat with the writer
trained on the previous round's kept queries, easy to hard. Every stage is an ordinary
node kind; this module only writes the nodes (`snakemake -n` shows them).
"""

from __future__ import annotations

from typing import Any

from ragtrain.core.settings import merge
from ragtrain.generation.pseudo_query import PREFERENCE_DEFAULTS, PSEUDO_QUERY_DEFAULTS
from ragtrain.graph.kinds import FILTER_KINDS, ConfigError, check_kind
from ragtrain.recipes.nodes import add_node, known_keys
from ragtrain.retrieval.retriever_training import BIENCODER_DEFAULTS, COLBERT_DEFAULTS
from ragtrain.training.sft_dpo import TRAIN_DEFAULTS

PSEUDO_QUERY_BLOCK_DEFAULTS: dict[str, Any] = {
    "name": "pq",
    "rounds": 1,
    "query_sft": {"learning_rate": 3e-4, "epochs": 2, "batch_size": 8, "max_length": 384},
    "queries": {},
    "filters": {
        "bm25": {"filter": "bm25", "rule": "pool_top1"},
        "dense": {"filter": "dense", "rule": "corpus_topk", "k": 10},
        "lossnet": {"filter": "lossnet"},
    },
    "combinations": [["bm25"], ["bm25", "dense"], ["bm25", "dense", "lossnet"]],
    "retriever": {},
    "colbert": None,
    "preferences": {},
    "evaluate": {"split": "test", "k": 100},
}


def expand(config: dict) -> None:
    """Expand the `pseudo_query` block (the SPTAR-style recipe) into plain nodes.

    With P its `name`, for a BEIR `dataset` whose corpus node is C:
    - `P_bm25`, `P_encoder`: BM25 and the untrained encoder over C (report baselines);
    - `P_gold_sft` (doc -> query SFT data from the gold train pairs) and `P_gold` (a
      bi-encoder trained on them alone);
    - per round r: `P_qgen_r<r>` (the query writer: SFT from `generator` in round 1,
      from the previous writer on the previous round's kept queries, easy to hard,
      after), `P_queries_r<r>` (its pseudo-queries), one chain of filter products per
      combination (`P_r<r>_bm25`, `P_r<r>_bm25_dense`, ...; shared prefixes made once),
      bi-encoders on gold plus all queries (`P_r<r>_all`) and on gold plus each
      combination's kept ones (`P_r<r>_<filters>`), an optional ColBERT on gold plus the
      last combination's, and `P_prefs_r<r>` (difficulty under the last combination's
      retriever, and preference pairs);
    - LossNet scores with the current retriever: `P_gold` in round 1, the previous round's
      last-combination retriever after;
    - one `evaluate_retrieval` entry over all of these retrievers.
    """
    block = merge(PSEUDO_QUERY_BLOCK_DEFAULTS, config["pseudo_query"])
    for field in ("dataset", "generator"):
        if not block.get(field):
            raise ConfigError(f"pseudo_query.{field}", "the pseudo_query block needs it")
    p, dataset, rounds = block["name"], block["dataset"], block["rounds"]
    corpus = (config["datasets"].get(dataset) or {}).get("corpus")
    if corpus is None:
        raise ConfigError(
            "pseudo_query.dataset", f"{dataset!r} is not a BEIR dataset with a corpus"
        )
    for i, combo in enumerate(block["combinations"]):
        for f in combo:
            if f not in block["filters"]:
                raise ConfigError(
                    f"pseudo_query.combinations[{i}]",
                    f"unknown filter {f!r} (filters: {', '.join(block['filters'])})",
                )
    if not block["combinations"]:
        raise ConfigError("pseudo_query.combinations", "list at least one filter combination")
    # The block's settings become nodes that the schema never saw: check their keys here.
    known_keys("pseudo_query.query_sft", block["query_sft"], TRAIN_DEFAULTS["sft"])
    known_keys("pseudo_query.queries", block["queries"], {**PSEUDO_QUERY_DEFAULTS, "generation": 0})
    known_keys("pseudo_query.retriever", block["retriever"], BIENCODER_DEFAULTS)
    known_keys("pseudo_query.colbert", block["colbert"] or {}, COLBERT_DEFAULTS)
    known_keys("pseudo_query.preferences", block["preferences"], PREFERENCE_DEFAULTS)
    for f, settings in block["filters"].items():
        check_kind(f"pseudo_query.filters.{f}.filter", settings.get("filter"), FILTER_KINDS)
        known_keys(
            f"pseudo_query.filters.{f}", settings, {**FILTER_KINDS[settings["filter"]], "filter": 0}
        )
    k = block["evaluate"]["k"]
    add_node(
        config,
        "pseudo_query",
        "retrievers",
        f"{p}_bm25",
        {"kind": "bm25", "corpus": corpus, "k": k},
    )
    encoder = block["retriever"].get("encoder", BIENCODER_DEFAULTS["encoder"])
    add_node(config, "pseudo_query", "retrievers", f"{p}_encoder",
         {"kind": "dense", "corpus": corpus, "k": k, "encoder": encoder})  # fmt: skip
    retriever = {"kind": "biencoder", "dataset": dataset, **block["retriever"]}
    add_node(
        config,
        "pseudo_query",
        "products",
        f"{p}_gold_sft",
        {"kind": "query_sft_data", "dataset": dataset},
    )
    add_node(config, "pseudo_query", "models", f"{p}_gold", {**retriever, "queries": []})
    evaluated = [f"{p}_bm25", f"{p}_encoder", f"{p}_gold"]
    current, last_prefs = f"{p}_gold", None
    for r in range(1, rounds + 1):
        qgen = f"{p}_qgen_r{r}"
        if r == 1:
            sft = {"init": block["generator"], "data": f"{p}_gold_sft"}
        else:
            add_node(
                config,
                "pseudo_query",
                "products",
                f"{p}_sft_r{r}",
                {"kind": "query_sft_data", "from": last_prefs},
            )
            # The previous round's kept queries come sorted easy to hard: keep that order.
            sft = {"init": f"{p}_qgen_r{r - 1}", "data": f"{p}_sft_r{r}", "sampling": "sequential"}
        add_node(
            config, "pseudo_query", "models", qgen, {**block["query_sft"], "kind": "sft", **sft}
        )
        queries = f"{p}_queries_r{r}"
        writer = {"kind": "pseudo_queries", "model": qgen, "dataset": dataset}
        add_node(config, "pseudo_query", "products", queries, {**block["queries"], **writer})
        add_node(
            config, "pseudo_query", "models", f"{p}_r{r}_all", {**retriever, "queries": [queries]}
        )
        evaluated.append(f"{p}_r{r}_all")
        last = None
        for combo in block["combinations"]:
            source = queries
            for j in range(len(combo)):
                name = f"{p}_r{r}_" + "_".join(combo[: j + 1])
                if name not in config["products"]:
                    settings = dict(block["filters"][combo[j]])
                    if settings.get("filter") == "lossnet":
                        settings.setdefault("retriever", current)
                    config["products"][name] = {**settings, "kind": "query_filter", "from": source}
                source = name
            model = f"{source}"
            if model not in config["models"]:
                add_node(
                    config, "pseudo_query", "models", model, {**retriever, "queries": [source]}
                )
                evaluated.append(model)
            last = source
        if block["colbert"] is not None:
            colbert = {"kind": "colbert", "dataset": dataset, "candidates": f"{p}_bm25",
                       **block["colbert"], "queries": [last]}  # fmt: skip
            add_node(config, "pseudo_query", "models", f"{p}_r{r}_colbert", colbert)
            evaluated.append(f"{p}_r{r}_colbert")
        last_prefs = f"{p}_prefs_r{r}"
        prefs = {"kind": "query_preferences", "from": last, "retriever": last}
        add_node(config, "pseudo_query", "products", last_prefs, {**block["preferences"], **prefs})
        current = last
    config.setdefault("evaluate_retrieval", [])
    config["evaluate_retrieval"] = [
        *(config["evaluate_retrieval"] or []),
        {"dataset": dataset, "retrievers": evaluated, **block["evaluate"]},
    ]
