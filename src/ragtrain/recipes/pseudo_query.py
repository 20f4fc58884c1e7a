"""The pseudo-query recipe (SPTAR-style): a `pseudo_query:` block expanded into plain nodes.

Pseudo-query augmentation of a retriever: a small LLM fine-tuned to write queries for
passages (doc -> query SFT on a task's few gold pairs) writes queries for unlabelled
passages; BM25, dense and LossNet filters keep the useful ones; bi-encoders (and
optionally a ColBERT) train on gold plus kept queries; rounds repeat with the writer
trained on the previous round's kept queries, easy to hard. With `rl`, each round also
trains a reward model on its kept-over-dropped query pairs and the writer by PPO, whose
queries go through the same filters beside the SFT writer's. Every stage is an ordinary
node kind; this module only writes the nodes (`snakemake -n` shows them).
"""

from __future__ import annotations

import re
from typing import Any

from ragtrain.core.settings import merge
from ragtrain.generation.pseudo_query import PREFERENCE_DEFAULTS, PSEUDO_QUERY_DEFAULTS
from ragtrain.graph.kinds import FILTER_KINDS, KINDS, ConfigError, check_kind
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
    # RM + PPO of each round's writer: true (these defaults), or settings over them.
    "rl": None,
}
RL_DEFAULTS: dict[str, Any] = {
    "reward_model": {},
    "ppo": {},
    # Weight of the retrieval reward (1/rank of the source passage under the round's
    # retriever) beside the reward model's; null: the reward model alone.
    "retrieval_reward": 1.0,
    # The filter combinations of the PPO writer's queries (null: the block's).
    "combinations": None,
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
    - with `rl`, per round after its pairs: `P_rm_r<r>` (a reward model from the round's
      writer on `P_prefs_r<r>`), `P_ppo_r<r>` (PPO of that writer over the passages its
      queries were written for, rewarded by the reward model and, weighted by
      `retrieval_reward`, the source passage's rank under the round's last-combination
      retriever), then the same chain for the PPO writer: `P_queries_r<r>_rl`, filters
      `P_r<r>_rl_...`, bi-encoders (no ColBERT) and `P_prefs_r<r>_rl`; the next round's
      writer starts from `P_ppo_r<r>` on those kept queries;
    - LossNet scores with the current retriever: `P_gold` in round 1, the previous round's
      last-combination retriever (of the PPO writer's queries, with `rl`) after;
    - one `evaluate_retrieval` entry over all of these retrievers, its `paired` (unless
      `evaluate` sets them): each trained one vs `P_gold`, each RL one vs its SFT twin.
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
    rl = _rl_settings(block)
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
    current, last_prefs, writer = f"{p}_gold", None, block["generator"]
    for r in range(1, rounds + 1):
        qgen = f"{p}_qgen_r{r}"
        if r == 1:
            sft = {"init": writer, "data": f"{p}_gold_sft"}
        else:
            add_node(
                config,
                "pseudo_query",
                "products",
                f"{p}_sft_r{r}",
                {"kind": "query_sft_data", "from": last_prefs},
            )
            # The previous round's kept queries come sorted easy to hard: keep that order.
            sft = {"init": writer, "data": f"{p}_sft_r{r}", "sampling": "sequential"}
        add_node(
            config, "pseudo_query", "models", qgen, {**block["query_sft"], "kind": "sft", **sft}
        )
        branch = {"block": block, "dataset": dataset, "retriever": retriever, "current": current}
        last, made = _branch(config, branch, qgen, f"{p}_queries_r{r}", f"{p}_r{r}",
                             block["combinations"], colbert=f"{p}_r{r}_colbert")  # fmt: skip
        evaluated += made
        last_prefs = f"{p}_prefs_r{r}"
        prefs = {"kind": "query_preferences", "from": last, "retriever": last}
        add_node(config, "pseudo_query", "products", last_prefs, {**block["preferences"], **prefs})
        writer = qgen
        if rl is not None:
            # RM on the round's pairs, PPO of its writer; the PPO writer's queries go
            # through the same filters beside the SFT writer's, and start the next round.
            ppo = _rl_writer(config, block, rl, r, qgen, last_prefs, last)
            last, made = _branch(config, branch, ppo, f"{p}_queries_r{r}_rl", f"{p}_r{r}_rl",
                                 rl["combinations"] or block["combinations"])  # fmt: skip
            evaluated += made
            last_prefs = f"{p}_prefs_r{r}_rl"
            prefs = {"kind": "query_preferences", "from": last, "retriever": last}
            add_node(
                config, "pseudo_query", "products", last_prefs, {**block["preferences"], **prefs}
            )
            writer = ppo
        current = last
    config.setdefault("evaluate_retrieval", [])
    config["evaluate_retrieval"] = [
        *(config["evaluate_retrieval"] or []),
        {
            "dataset": dataset,
            "retrievers": evaluated,
            "paired": _default_pairs(p, evaluated, config["models"]),
            **block["evaluate"],
        },
    ]


def _default_pairs(p: str, evaluated: list[str], models: dict) -> list[list[str]]:
    """The report's retriever pairs unless the block's `evaluate` names its own: each
    trained retriever against `<P>_gold` (what pseudo-queries add to the gold pairs), then
    each RL writer's retriever `<P>_r<r>_rl_<x>` against its SFT writer's twin
    `<P>_r<r>_<x>` (what PPO adds), where the twin is evaluated too."""
    gold = f"{p}_gold"
    pairs = [[name, gold] for name in evaluated if name in models and name != gold]
    rl = re.compile(rf"{re.escape(p)}_r(\d+)_rl_(.+)")
    for name in evaluated:
        if (m := rl.fullmatch(name)) and (twin := f"{p}_r{m[1]}_{m[2]}") in evaluated:
            pairs.append([name, twin])
    return pairs


def _branch(
    config: dict,
    branch: dict,
    writer: str,
    queries: str,
    prefix: str,
    combinations: list[list[str]],
    colbert: str | None = None,
) -> tuple[str, list[str]]:
    """A writer's pseudo-queries (`queries`), one chain of filter products per
    combination (`<prefix>_bm25`, `<prefix>_bm25_dense`, ...; shared prefixes made once),
    bi-encoders on gold plus all queries (`<prefix>_all`) and on gold plus each
    combination's kept ones, and the block's ColBERT (named `colbert`) on the last
    combination's. LossNet scores with `branch["current"]`. Returns the last
    combination's product (also the name of its retriever) and the retrievers made."""
    block, dataset, retriever = branch["block"], branch["dataset"], branch["retriever"]
    node = {"kind": "pseudo_queries", "model": writer, "dataset": dataset}
    add_node(config, "pseudo_query", "products", queries, {**block["queries"], **node})
    add_node(config, "pseudo_query", "models", f"{prefix}_all", {**retriever, "queries": [queries]})
    made, last = [f"{prefix}_all"], queries
    for combo in combinations:
        source = queries
        for j in range(len(combo)):
            name = f"{prefix}_" + "_".join(combo[: j + 1])
            if name not in config["products"]:
                settings = dict(block["filters"][combo[j]])
                if settings.get("filter") == "lossnet":
                    settings.setdefault("retriever", branch["current"])
                config["products"][name] = {**settings, "kind": "query_filter", "from": source}
            source = name
        if source not in config["models"]:
            add_node(config, "pseudo_query", "models", source, {**retriever, "queries": [source]})
            made.append(source)
        last = source
    if colbert is not None and block["colbert"] is not None:
        node = {"kind": "colbert", "dataset": dataset, "candidates": f"{block['name']}_bm25",
                **block["colbert"], "queries": [last]}  # fmt: skip
        add_node(config, "pseudo_query", "models", colbert, node)
        made.append(colbert)
    return last, made


def _rl_settings(block: dict) -> dict | None:
    """The block's `rl` over its defaults (None: no RL), its keys checked."""
    rl = block.get("rl")
    if rl in (None, False):
        return None
    rl = merge(RL_DEFAULTS, {} if rl is True else rl)
    # Any key of the node kinds but what the block sets: the writer, its prompts, rewards.
    made = {"kind", "init", "data", "dataset", "rewards", "retrieval", "prompt"}
    ppo_keys = dict.fromkeys(KINDS[("models", "ppo")].keys - made, 0)
    rm_keys = dict.fromkeys(KINDS[("models", "reward_model")].keys - made, 0)
    known_keys("pseudo_query.rl.ppo", rl["ppo"], ppo_keys)
    for key in ("docs", "seed"):  # they pick PPO's passages: the writer's own sample
        if key in rl["ppo"]:
            raise ConfigError(
                f"pseudo_query.rl.ppo.{key}",
                "PPO's prompts are the passages the SFT writer wrote for: set"
                f" pseudo_query.queries.{key} instead",
            )
    known_keys("pseudo_query.rl.reward_model", rl["reward_model"], rm_keys)
    weight = rl["retrieval_reward"]
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)):
        raise ConfigError(
            "pseudo_query.rl.retrieval_reward", f"expected a weight or null, got {weight!r}"
        )
    for i, combo in enumerate(rl["combinations"] or []):
        for f in combo:
            if f not in block["filters"]:
                raise ConfigError(
                    f"pseudo_query.rl.combinations[{i}]",
                    f"unknown filter {f!r} (filters: {', '.join(block['filters'])})",
                )
    return rl


def _rl_writer(
    config: dict, block: dict, rl: dict, r: int, qgen: str, prefs: str, retriever: str
) -> str:
    """Round r's reward model (`<P>_rm_r<r>`, from the SFT writer, on its query pairs)
    and PPO writer (`<P>_ppo_r<r>`); returns the PPO writer's name."""
    p = block["name"]
    rm, ppo = f"{p}_rm_r{r}", f"{p}_ppo_r{r}"
    node = {**rl["reward_model"], "kind": "reward_model", "init": qgen, "data": prefs}
    add_node(config, "pseudo_query", "models", rm, node)
    rewards: list[dict] = [{"kind": "reward_model", "model": rm}]
    if rl["retrieval_reward"] is not None:
        rewards.append(
            {"kind": "retrieval_rank", "retriever": retriever, "weight": rl["retrieval_reward"]}
        )
    # The prompts: the passages the SFT writer wrote for (same `docs` and seed).
    samples = {"docs": block["queries"].get("docs", PSEUDO_QUERY_DEFAULTS["docs"])}
    if "seed" in block["queries"]:
        samples["seed"] = block["queries"]["seed"]
    node = {**samples, **rl["ppo"], "kind": "ppo", "init": qgen, "dataset": block["dataset"],
            "rewards": rewards}  # fmt: skip
    add_node(config, "pseudo_query", "models", ppo, node)
    return ppo
