"""The config graph: named nodes that refer to each other by name.

Snakemake's `validate(..., set_default=True)` fills defaults only under schema
`properties`, not inside user-named maps (datasets, models, ...), so this module
fills those, checks every cross-reference and rejects cycles. It runs when the
Snakefile is parsed, so a bad config stops the run before any job, with the
offending key in the message.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ragtrain.core.seeds import DEFAULT_SEED
from ragtrain.data.beir import WORLD_TASK_DEFAULTS
from ragtrain.data.world import WorldConfig
from ragtrain.generation.judge import JUDGE_DEFAULTS
from ragtrain.generation.products import PAIRS_DEFAULTS, SFT_DEFAULTS
from ragtrain.generation.pseudo_query import (
    PREFERENCE_DEFAULTS,
    PSEUDO_QUERY_DEFAULTS,
    QUERY_SFT_DEFAULTS,
)
from ragtrain.retrieval.index import BM25_DEFAULTS
from ragtrain.retrieval.lossnet import LOSSNET_DEFAULTS
from ragtrain.retrieval.query_filters import FILTER_DEFAULTS
from ragtrain.retrieval.retriever_training import BIENCODER_DEFAULTS, COLBERT_DEFAULTS
from ragtrain.training.group_rl import GROUP_RL_DEFAULTS
from ragtrain.training.ppo import PPO_DEFAULTS
from ragtrain.training.rejection import BEST_OF_N_DEFAULTS, SEGMENT_BEAM_DEFAULTS
from ragtrain.training.reward_model import REWARD_MODEL_DEFAULTS
from ragtrain.training.rewards import check_specs, reward_models
from ragtrain.training.sft_dpo import TRAIN_DEFAULTS

NO_RETRIEVAL = "none"


class ConfigError(ValueError):
    """A config problem, with the dotted key it concerns."""

    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(f"config key {key}: {reason}")


# Defaults for the entries of each user-named section, per kind where kinds differ.
CORPUS_DEFAULTS: dict[str, Any] = {"format": "beir"}
RETRIEVER_DEFAULTS: dict[str, dict[str, Any]] = {
    "bm25": {"k": 3, **BM25_DEFAULTS},
    "dense": {
        "k": 3,
        "encoder": "all-MiniLM-L6-v2",
        "batch_size": 64,
        "query_prefix": "",
        "passage_prefix": "",
        "trust_remote_code": False,
    },
}
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # QA examples
    "qa": {"format": "auto", "limit": None},
    # retrieval tasks in BEIR's layout (corpus, queries, qrels per split)
    "beir": {"splits": ["train", "dev", "test"]},
}
RETRIEVER_MODELS = ("biencoder", "colbert")
# RL models sample from prompts: a QA dataset rendered with a prompt (like self-demos),
# a share of its questions held out for the dev reward.
RL_MODELS = ("ppo", "grpo", "rloo")
# Trained causal LMs: what evaluation and generation can load.
LLM_KINDS = ("sft", "dpo", *RL_MODELS)
RL_PROMPTS = {"retrieval": NO_RETRIEVAL, "dev_fraction": 0.15}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "base": {"dtype": "bfloat16", "trust_remote_code": False, "revision": None},
    **TRAIN_DEFAULTS,
    "reward_model": REWARD_MODEL_DEFAULTS,
    "ppo": {**PPO_DEFAULTS, **RL_PROMPTS},
    **{kind: {**defaults, **RL_PROMPTS} for kind, defaults in GROUP_RL_DEFAULTS.items()},
    # Retrievers trained on a task's gold train pairs plus the queries of `queries`.
    "biencoder": {**BIENCODER_DEFAULTS, "queries": []},
    "colbert": {**COLBERT_DEFAULTS, "queries": []},
}
# Which product kinds a trained LLM's `data` may be.
SFT_PRODUCTS = ("sft_data", "query_sft_data", "best_of_n", "segment_beam")
PAIR_PRODUCTS = ("preference_pairs", "query_preferences")
TRAINING_DATA = {"sft": SFT_PRODUCTS, "dpo": PAIR_PRODUCTS, "reward_model": PAIR_PRODUCTS}
QUERY_KINDS = ("pseudo_queries", "query_filter", "query_preferences")
PRODUCT_DEFAULTS: dict[str, dict[str, Any]] = {
    # prompt: `rag`, or `closed_book` for `retrieval: none` (filled in _fill_nodes).
    "self_demos": {"n": 4, "shard_size": 64},
    "judge": JUDGE_DEFAULTS,
    "sft_data": SFT_DEFAULTS,
    "preference_pairs": PAIRS_DEFAULTS,
    "query_sft_data": QUERY_SFT_DEFAULTS,
    "pseudo_queries": PSEUDO_QUERY_DEFAULTS,
    # per `filter` (bm25, dense, lossnet): see FILTER_KINDS
    "query_filter": {},
    "query_preferences": PREFERENCE_DEFAULTS,
    # a trained reward model's score on every sample of a generation product
    "reward": {"batch_size": 8},
    # rejection sampling into SFT data: the best sample by reward (holistic), or the
    # best answer grown sentence by sentence (fine-grained)
    "best_of_n": {**BEST_OF_N_DEFAULTS, "rewards": [{"kind": "correctness"}]},
    "segment_beam": {**SEGMENT_BEAM_DEFAULTS, "rewards": [{"kind": "correctness"}]},
}
FILTER_KINDS: dict[str, dict[str, Any]] = {
    **FILTER_DEFAULTS,
    "lossnet": {**LOSSNET_DEFAULTS, "retriever": None},
}
# What each product kind is made from (its `from`), where it is made from a product.
PRODUCT_SOURCES = {
    "judge": ("self_demos",),
    "reward": ("self_demos", "judge"),
    "best_of_n": ("self_demos", "judge", "reward"),
    "sft_data": ("judge",),
    "preference_pairs": ("judge",),
    "query_filter": ("pseudo_queries", "query_filter"),
    "query_preferences": ("pseudo_queries", "query_filter"),
    "query_sft_data": ("pseudo_queries", "query_filter", "query_preferences"),
}
# The fields each product kind needs.
PRODUCT_NEEDS = {
    "self_demos": ("model", "dataset", "retrieval"),
    "pseudo_queries": ("model", "dataset"),
    "reward": ("from", "model"),
    "segment_beam": ("model", "dataset"),
    "query_filter": ("from", "filter"),
    "query_preferences": ("from", "retriever"),
    "query_sft_data": (),  # a dataset or a product: checked in _fill_nodes
}
GENERATION_DEFAULTS: dict[str, Any] = {
    "backend": "vllm",
    "max_new_tokens": 32,
    "temperature": 0.0,
    "top_p": 1.0,
    "top_k": -1,
    "batch_size": 16,
    "seed": DEFAULT_SEED,
    # auto / null: chosen for the device by ragtrain.generation.engine.device_defaults.
    "dtype": "auto",
    "max_model_len": 2048,
    "gpu_memory_utilization": None,
    "enforce_eager": None,
    "tensor_parallel_size": 1,
}
EVALUATE_DEFAULTS: dict[str, Any] = {"prompt": "rag", "closed_book_prompt": "closed_book"}

# Which fields of a node name another node, and in which section.
REFERENCES: dict[str, dict[str, str]] = {
    "corpora": {"world": "worlds"},
    "retrievers": {"corpus": "corpora"},
    "datasets": {"world": "worlds", "corpus": "corpora"},
    "products": {
        "from": "products",
        "model": "models",
        "dataset": "datasets",
        "retrieval": "retrievers",
        "retriever": "models",
    },
    "models": {
        "init": "models",
        "data": "products",
        "dataset": "datasets",
        "queries": "products",
        "retrieval": "retrievers",
    },
}
SECTIONS = ("worlds", "corpora", "retrievers", "datasets", "products", "models")


def _merge(defaults: dict, node: dict) -> dict:
    out = copy.deepcopy(defaults)
    for key, value in node.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _one_source(section: str, name: str, node: dict, choices: tuple[str, ...]) -> str:
    given = [c for c in choices if node.get(c) is not None]
    if len(given) != 1:
        raise ConfigError(
            f"{section}.{name}",
            f"give exactly one of {', '.join(choices)} (got {', '.join(given) or 'none'})",
        )
    return given[0]


def _kind(section: str, name: str, kind, defaults: dict) -> None:
    _kind_of(f"{section}.{name}.kind", kind, defaults)


def _kind_of(key: str, kind, defaults: dict) -> None:
    if kind not in defaults:
        raise ConfigError(key, f"expected one of {sorted(defaults)}, got {kind!r}")


def _require(section: str, name: str, node: dict, fields: tuple[str, ...], what: str) -> None:
    for field in fields:
        if not node.get(field):
            raise ConfigError(f"{section}.{name}.{field}", f"a {what} needs {field}")


def _seeded(defaults: dict, seed: int) -> dict:
    """Kind defaults with the run's seed, for kinds that have a seed."""
    return {**defaults, "seed": seed} if "seed" in defaults else defaults


def _fill_nodes(config: dict) -> None:
    # The top-level seed is the default seed of every world and of generation.
    seed = config.setdefault("seed", DEFAULT_SEED)
    for name, node in config["worlds"].items():
        # Shallow: a world's `questions` replaces the default splits, not adds to them.
        config["worlds"][name] = {**asdict(WorldConfig()), "seed": seed, **node}
        try:
            WorldConfig.from_dict(config["worlds"][name])
        except ValueError as e:
            raise ConfigError(f"worlds.{name}", str(e)) from None
    for name, node in config["corpora"].items():
        _one_source("corpora", name, node, ("world", "path"))
        config["corpora"][name] = _merge(CORPUS_DEFAULTS, node)
    for name, node in config["retrievers"].items():
        kind = node.get("kind")
        _kind("retrievers", name, kind, RETRIEVER_DEFAULTS)
        config["retrievers"][name] = _merge(RETRIEVER_DEFAULTS[kind], node)
    for name, node in config["datasets"].items():
        kind = node.setdefault("kind", "qa")
        _kind("datasets", name, kind, DATASET_DEFAULTS)
        source = _one_source("datasets", name, node, ("world", "path"))
        defaults = DATASET_DEFAULTS[kind]
        if kind == "qa" and source == "world" and not node.get("split"):
            raise ConfigError(f"datasets.{name}.split", "a dataset from a world needs a split")
        if kind == "beir":
            _require("datasets", name, node, ("corpus",), "BEIR dataset")
            if source == "world":
                defaults = {**WORLD_TASK_DEFAULTS, "seed": seed}
                node = {**node, "splits": list(node.get("queries") or defaults["queries"])}
        config["datasets"][name] = _merge(defaults, node)
    for name, node in config["models"].items():
        kind = node.setdefault("kind", "base")
        _kind("models", name, kind, MODEL_DEFAULTS)
        if kind in (*LLM_KINDS, "reward_model") and "trust_remote_code" in node:
            raise ConfigError(
                f"models.{name}.trust_remote_code",
                "a trained model inherits it from the model it starts from (init): set it there",
            )
        if kind == "base":
            _one_source("models", name, node, ("gguf", "path", "hub"))
        elif kind in RETRIEVER_MODELS:
            _require("models", name, node, ("dataset",), f"{kind} model")
        elif kind in RL_MODELS:
            _require("models", name, node, ("init", "dataset"), f"{kind} model")
        else:
            _require("models", name, node, ("init", "data"), f"{kind} model")
        filled = _merge(_seeded(MODEL_DEFAULTS[kind], seed), node)
        if kind in RL_MODELS:
            filled.setdefault("prompt", _default_prompt(filled["retrieval"]))
        config["models"][name] = filled
    config["generation"] = _merge(
        {**GENERATION_DEFAULTS, "seed": seed}, config.get("generation") or {}
    )
    for name, node in config["products"].items():
        kind = node.get("kind")
        _kind("products", name, kind, PRODUCT_DEFAULTS)
        if kind == "query_sft_data":
            _one_source("products", name, node, ("dataset", "from"))
        needed = PRODUCT_NEEDS.get(kind, ("from",) if kind in PRODUCT_SOURCES else ())
        _require("products", name, node, needed, f"{kind} product")
        defaults = PRODUCT_DEFAULTS[kind]
        if kind == "query_filter":
            _kind_of(f"products.{name}.filter", node["filter"], FILTER_KINDS)
            defaults = FILTER_KINDS[node["filter"]]
        filled = _merge(_seeded(defaults, seed), node)
        if kind in ("self_demos", "segment_beam"):
            filled.setdefault("retrieval", NO_RETRIEVAL)
            filled.setdefault("prompt", _default_prompt(filled["retrieval"]))
        if kind in ("self_demos", "pseudo_queries", "segment_beam"):
            # Sampling settings: the run's generation settings under the product's own.
            filled["generation"] = _merge(config["generation"], node.get("generation") or {})
        config["products"][name] = filled


def _default_prompt(retrieval: str) -> str:
    return "closed_book" if retrieval == NO_RETRIEVAL else "rag"


def _check_rewards(config: dict) -> None:
    """Reward source lists: well formed, and their reward models are reward models."""
    for section in ("models", "products"):
        for name, node in config[section].items():
            if "rewards" not in node:
                continue
            key = f"{section}.{name}.rewards"
            try:
                check_specs(node["rewards"], key)
            except ValueError as e:
                # check_specs names the exact key first: `<key>[i].<setting>: reason`
                where, _, reason = str(e).partition(": ")
                raise ConfigError(where, reason) from None
            for i, model in enumerate(reward_models(node["rewards"])):
                _reward_model(config, f"{key}[{i}].model", model)
        if section == "products":
            for name, node in config[section].items():
                if node["kind"] == "reward":
                    _reward_model(config, f"products.{name}.model", node["model"])


def _check_language_models(config: dict) -> None:
    """What starts training or generates must be a language model, not a reward model
    or a retriever."""
    lms = ("base", *LLM_KINDS)
    checks = [
        (f"models.{n}.init", m.get("init"))
        for n, m in config["models"].items()
        if m["kind"] not in RETRIEVER_MODELS
    ] + [
        (f"products.{n}.model", p.get("model"))
        for n, p in config["products"].items()
        if p["kind"] in ("self_demos", "pseudo_queries", "segment_beam")
    ]
    for key, name in checks:
        if name and config["models"][name]["kind"] not in lms:
            raise ConfigError(
                key, f"{name!r} is a {config['models'][name]['kind']} model, not a language model"
            )


def _reward_model(config: dict, key: str, name: str) -> None:
    found = config["models"].get(name, {}).get("kind")
    if found != "reward_model":
        known = sorted(n for n, m in config["models"].items() if m["kind"] == "reward_model")
        raise ConfigError(
            key,
            f"expected a reward_model model, got {name!r} ({found or 'unknown'};"
            f" reward models: {', '.join(known) or 'none'})",
        )


def _refs(value) -> list:
    """A reference field's names: one name, or a list of them (a retriever's `queries`)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _check_references(config: dict) -> None:
    for section, fields in REFERENCES.items():
        for name, node in config[section].items():
            for field, target in fields.items():
                for ref in _refs(node.get(field)):
                    if ref in config[target]:
                        continue
                    if target == "retrievers" and ref == NO_RETRIEVAL:
                        continue  # closed book
                    known = ", ".join(sorted(config[target])) or "none"
                    raise ConfigError(
                        f"{section}.{name}.{field}",
                        f"unknown {target[:-1] if target != 'corpora' else 'corpus'} "
                        f"{ref!r} (known: {known})",
                    )
    # Products and trained models read the kinds of product they are built from.
    for section, field, wanted_kinds, verb in (
        ("products", "from", PRODUCT_SOURCES, "product is made from"),
        ("models", "data", TRAINING_DATA, "model trains on"),
        ("models", "queries", dict.fromkeys(RETRIEVER_MODELS, QUERY_KINDS), "trains on"),
    ):
        for name, node in config[section].items():
            wanted = wanted_kinds.get(node["kind"])
            for ref in _refs(node.get(field)) if wanted else []:
                found = config["products"][ref]["kind"]
                if found not in wanted:
                    raise ConfigError(
                        f"{section}.{name}.{field}",
                        f"a {node['kind']} {verb} a {' or '.join(wanted)} product,"
                        f" not {ref!r} ({found})",
                    )
    _check_tasks(config)
    # A world-backed QA dataset needs its split to exist in that world.
    for name, node in config["datasets"].items():
        if node.get("world") is not None and node["kind"] == "qa":
            splits = config["worlds"][node["world"]]["questions"]
            if node["split"] not in splits:
                raise ConfigError(
                    f"datasets.{name}.split",
                    f"world {node['world']!r} has no split {node['split']!r} "
                    f"(splits: {', '.join(splits)})",
                )


def _dataset_kind(config: dict, key: str, name: str, wanted: str) -> None:
    found = config["datasets"][name]["kind"]
    if found != wanted:
        what = {"qa": "QA dataset", "beir": "BEIR (retrieval) dataset"}[wanted]
        raise ConfigError(key, f"expected a {what}, got {name!r} (kind {found})")


def _check_tasks(config: dict) -> None:
    """Retrieval tasks: the kinds of the datasets nodes read, and the corpus they share."""
    for name, node in config["datasets"].items():
        if node["kind"] == "beir" and node.get("world"):
            corpus_world = config["corpora"][node["corpus"]].get("world")
            if corpus_world != node["world"]:
                raise ConfigError(
                    f"datasets.{name}.corpus",
                    f"a task from world {node['world']!r} needs that world's corpus,"
                    f" not {node['corpus']!r}",
                )
    for name, node in config["products"].items():
        if node["kind"] in ("self_demos", "segment_beam"):
            _dataset_kind(config, f"products.{name}.dataset", node["dataset"], "qa")
        elif node.get("dataset"):
            _dataset_kind(config, f"products.{name}.dataset", node["dataset"], "beir")
    for name, node in config["models"].items():
        if node["kind"] in RL_MODELS:
            _dataset_kind(config, f"models.{name}.dataset", node["dataset"], "qa")
        if node["kind"] not in RETRIEVER_MODELS:
            continue
        _dataset_kind(config, f"models.{name}.dataset", node["dataset"], "beir")
        if node["kind"] == "colbert":
            ref = node["candidates"]
            known = [*config["retrievers"], *_retriever_models(config)]
            if ref not in known:
                raise ConfigError(
                    f"models.{name}.candidates",
                    f"expected a retriever or a biencoder model, got {ref!r}"
                    f" (known: {', '.join(sorted(known)) or 'none'})",
                )
    for entry in config.get("retrieval_evaluations", []):
        _dataset_kind(config, entry["key"], entry["dataset"], "beir")
        name, task = entry["retriever"], config["datasets"][entry["dataset"]]
        if name in config["retrievers"]:
            if config["retrievers"][name]["corpus"] != task["corpus"]:
                raise ConfigError(
                    f"{entry['key']}.retrievers",
                    f"retriever {name!r} indexes corpus {config['retrievers'][name]['corpus']!r},"
                    f" but task {entry['dataset']!r} judges passages of {task['corpus']!r}",
                )
        elif config["models"][name]["kind"] not in RETRIEVER_MODELS:
            raise ConfigError(
                f"{entry['key']}.retrievers",
                f"{name!r} is a {config['models'][name]['kind']} model, not a retriever",
            )
    for i, entry in enumerate(config.get("evaluate") or []):
        for name in entry.get("datasets", []):
            if name in config["datasets"]:
                _dataset_kind(config, f"evaluate[{i}].datasets", name, "qa")


def _retriever_models(config: dict) -> list[str]:
    return [n for n, m in config["models"].items() if m["kind"] == "biencoder"]


def _check_cycles(config: dict) -> None:
    """Reject references that loop: a model initialised from itself, or a model whose
    training data is sampled from that very model (across sections)."""

    def edges(section: str, name: str):
        for field, target in REFERENCES.get(section, {}).items():
            for ref in _refs(config[section][name].get(field)):
                if ref in config[target]:
                    yield target, ref

    done: set[tuple[str, str]] = set()

    def visit(node: tuple[str, str], path: list[tuple[str, str]]) -> None:
        if node in path:
            loop = [*path[path.index(node) :], node]
            same = len({section for section, _ in loop}) == 1
            chain = " -> ".join(n if same else f"{s}.{n}" for s, n in loop)
            raise ConfigError(f"{loop[0][0]}.{loop[0][1]}", f"cycle: {chain}")
        if node in done:
            return
        for nxt in edges(*node):
            visit(nxt, [*path, node])
        done.add(node)

    for section in REFERENCES:
        for name in config[section]:
            visit((section, name), [])


def _expand_evaluate(config: dict, prompts_dir: Path | None) -> list[dict]:
    """Flatten `evaluate` entries into one node per (model, dataset, retrieval)."""
    nodes: dict[tuple[str, str, str], dict] = {}
    first_entry: dict[tuple[str, str, str], int] = {}
    for i, entry in enumerate(config.get("evaluate") or []):
        entry = _merge(EVALUATE_DEFAULTS, entry)
        for field, section in (("models", "models"), ("datasets", "datasets")):
            for ref in entry[field]:
                if ref not in config[section]:
                    known = ", ".join(sorted(config[section]))
                    raise ConfigError(
                        f"evaluate[{i}].{field}", f"unknown name {ref!r} (known: {known})"
                    )
        for ref in entry["models"]:
            if config["models"][ref]["kind"] not in ("base", *LLM_KINDS):
                raise ConfigError(
                    f"evaluate[{i}].models",
                    f"{ref!r} is a {config['models'][ref]['kind']} model, not a language model",
                )
        for ref in entry["retrieval"]:
            if ref != NO_RETRIEVAL and ref not in config["retrievers"]:
                known = ", ".join([*sorted(config["retrievers"]), NO_RETRIEVAL])
                raise ConfigError(
                    f"evaluate[{i}].retrieval", f"unknown retriever {ref!r} (known: {known})"
                )
        if prompts_dir is not None:
            for field in ("prompt", "closed_book_prompt"):
                if not (prompts_dir / f"{entry[field]}.jinja").is_file():
                    raise ConfigError(
                        f"evaluate[{i}].{field}",
                        f"no template {entry[field]}.jinja in {prompts_dir}",
                    )
        generation = _merge(config["generation"], entry.get("generation") or {})
        for model in entry["models"]:
            for dataset in entry["datasets"]:
                for retrieval in entry["retrieval"]:
                    prompt = (
                        entry["prompt"]
                        if retrieval != NO_RETRIEVAL
                        else entry["closed_book_prompt"]
                    )
                    key = (model, dataset, retrieval)
                    if key in first_entry:
                        raise ConfigError(
                            f"evaluate[{i}]",
                            f"evaluates {model} on {dataset} with {retrieval} again"
                            f" (already in evaluate[{first_entry[key]}])",
                        )
                    first_entry[key] = i
                    nodes[key] = {
                        "model": model,
                        "dataset": dataset,
                        "retrieval": retrieval,
                        "prompt": prompt,
                        "generation": generation,
                        **({"resources": entry["resources"]} if entry.get("resources") else {}),
                    }
    return list(nodes.values())


def prepare(config: dict, prompts_dir: Path | None = None) -> dict:
    """Return a copy of a schema-validated config with node defaults filled and references checked.

    Expands a `pseudo_query` block into its nodes (see expand_pseudo_query). Adds
    `evaluations` and `retrieval_evaluations`: the flat lists of evaluation nodes. With
    `prompts_dir`, the prompt templates that nodes name must exist there.
    """
    config = copy.deepcopy(config)
    for section in SECTIONS:
        config[section] = config.get(section) or {}
    if config.get("pseudo_query"):
        expand_pseudo_query(config)
    config["retrieval_evaluations"] = _expand_evaluate_retrieval(config)
    _fill_nodes(config)
    _check_references(config)
    _check_rewards(config)
    _check_language_models(config)
    _check_cycles(config)
    _check_launch(config)
    _fill_task_datasets(config)
    if prompts_dir is not None:
        for section in ("products", "models"):
            for name, node in config[section].items():
                if "prompt" in node and not (prompts_dir / f"{node['prompt']}.jinja").is_file():
                    raise ConfigError(
                        f"{section}.{name}.prompt",
                        f"no template {node['prompt']}.jinja in {prompts_dir}",
                    )
    config["evaluations"] = _expand_evaluate(config, prompts_dir)
    _fill_tensor_parallel(config)
    return config


# Trainer-based training (TRL): what a `deepspeed` config reaches. Under ZeRO-3 each
# process holds a slice of the weights; SFT/DPO gather them to save, the others save
# from the first process and so take ZeRO-2 only.
DEEPSPEED_KINDS = {"sft": ("zero2", "zero3"), "dpo": ("zero2", "zero3")}
DEEPSPEED_KINDS.update({kind: ("zero2",) for kind in ("reward_model", "grpo", "rloo")})
# Models whose rule starts them through ragtrain.launch (several GPUs or nodes).
LAUNCHED_KINDS = (*TRAIN_DEFAULTS, "reward_model", *RL_MODELS)
# Products that generate with an engine (vLLM takes every GPU of the job).
GENERATING_PRODUCTS = ("self_demos", "pseudo_queries", "segment_beam")


def _check_launch(config: dict) -> None:
    for name, node in config["models"].items():
        kind, stages = node["kind"], DEEPSPEED_KINDS.get(node["kind"], ())
        if node.get("deepspeed") and node["deepspeed"] not in stages:
            allowed = f"one of {list(stages)}" if stages else "no DeepSpeed config"
            raise ConfigError(f"models.{name}.deepspeed", f"a {kind} model takes {allowed}")
        if (node.get("resources") or {}).get("nodes", 1) > 1 and kind not in LAUNCHED_KINDS:
            raise ConfigError(
                f"models.{name}.resources.nodes",
                f"a {kind} model runs on one node (several: {', '.join(LAUNCHED_KINDS)})",
            )
    for name, node in config["products"].items():
        if (node.get("resources") or {}).get("nodes", 1) > 1:
            raise ConfigError(f"products.{name}.resources.nodes", "products run on one node")


def _fill_tensor_parallel(config: dict) -> None:
    """vLLM shards the model over every GPU of a generating job, unless the node's
    generation settings choose a tensor-parallel size themselves."""
    default_gpus = (config.get("resources") or {}).get("generate", {}).get("gpu", 1)
    nodes = [p for p in config["products"].values() if p["kind"] in GENERATING_PRODUCTS]
    for node in [*nodes, *config["evaluations"]]:
        gpus = (node.get("resources") or {}).get("gpu", default_gpus)
        generation = node["generation"]
        if gpus > 1 and generation.get("tensor_parallel_size", 1) == 1:
            node["generation"] = {**generation, "tensor_parallel_size": gpus}


def _fill_task_datasets(config: dict) -> None:
    """Query products made from other products work on their source's task (its corpus);
    the retrievers that read them and rank with them must share it."""

    def task(name: str) -> str:
        node = config["products"][name]
        return node.get("dataset") or task(node["from"])

    for name, node in config["products"].items():
        if node["kind"] in (*QUERY_KINDS, "query_sft_data"):
            node["dataset"] = task(name)
    for name, node in config["models"].items():
        for ref in node.get("queries", []) if node["kind"] in RETRIEVER_MODELS else []:
            if config["products"][ref]["dataset"] != node["dataset"]:
                raise ConfigError(
                    f"models.{name}.queries",
                    f"{ref!r} holds queries of task {config['products'][ref]['dataset']!r},"
                    f" not of {node['dataset']!r}",
                )
    for name, node in config["products"].items():
        ref = node.get("retriever") if node["kind"] in QUERY_KINDS else None
        if ref is not None and config["models"][ref]["kind"] != "biencoder":
            raise ConfigError(
                f"products.{name}.retriever",
                f"expected a biencoder model, got {ref!r} ({config['models'][ref]['kind']})",
            )


RETRIEVAL_EVAL_DEFAULTS = {"split": "test", "k": 100}


def _expand_evaluate_retrieval(config: dict) -> list[dict]:
    """One node per (retriever, dataset, split) of the `evaluate_retrieval` entries."""
    nodes, seen = [], {}
    for i, entry in enumerate(config.get("evaluate_retrieval") or []):
        entry = {**RETRIEVAL_EVAL_DEFAULTS, **entry}
        for name in entry["retrievers"]:
            if name not in config["retrievers"] and name not in config["models"]:
                known = ", ".join(sorted([*config["retrievers"], *config["models"]]))
                raise ConfigError(
                    f"evaluate_retrieval[{i}].retrievers",
                    f"unknown retriever {name!r} (known: {known})",
                )
            key = (name, entry["dataset"], entry["split"])
            if key in seen:
                raise ConfigError(
                    f"evaluate_retrieval[{i}]",
                    f"evaluates {name} on {entry['dataset']} ({entry['split']}) again"
                    f" (already in evaluate_retrieval[{seen[key]}])",
                )
            seen[key] = i
            nodes.append(
                {
                    "key": f"evaluate_retrieval[{i}]",
                    "retriever": name,
                    "dataset": entry["dataset"],
                    "split": entry["split"],
                    "k": entry["k"],
                }
            )
    return nodes


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


def _known_keys(key: str, given: dict, allowed: dict) -> None:
    for field in given:
        if field not in allowed:
            raise ConfigError(
                f"{key}.{field}", f"unknown key (known: {', '.join(sorted(allowed))})"
            )


def _add(config: dict, section: str, name: str, node: dict) -> None:
    if name in config[section]:
        raise ConfigError(
            f"{section}.{name}", "the pseudo_query block makes a node of this name: rename one"
        )
    config[section][name] = node


def expand_pseudo_query(config: dict) -> None:
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
    block = _merge(PSEUDO_QUERY_BLOCK_DEFAULTS, config["pseudo_query"])
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
    _known_keys("pseudo_query.query_sft", block["query_sft"], TRAIN_DEFAULTS["sft"])
    _known_keys(
        "pseudo_query.queries", block["queries"], {**PSEUDO_QUERY_DEFAULTS, "generation": 0}
    )
    _known_keys("pseudo_query.retriever", block["retriever"], BIENCODER_DEFAULTS)
    _known_keys("pseudo_query.colbert", block["colbert"] or {}, COLBERT_DEFAULTS)
    _known_keys("pseudo_query.preferences", block["preferences"], PREFERENCE_DEFAULTS)
    for f, settings in block["filters"].items():
        _kind_of(f"pseudo_query.filters.{f}.filter", settings.get("filter"), FILTER_KINDS)
        _known_keys(
            f"pseudo_query.filters.{f}", settings, {**FILTER_KINDS[settings["filter"]], "filter": 0}
        )
    k = block["evaluate"]["k"]
    _add(config, "retrievers", f"{p}_bm25", {"kind": "bm25", "corpus": corpus, "k": k})
    encoder = block["retriever"].get("encoder", BIENCODER_DEFAULTS["encoder"])
    _add(config, "retrievers", f"{p}_encoder",
         {"kind": "dense", "corpus": corpus, "k": k, "encoder": encoder})  # fmt: skip
    retriever = {"kind": "biencoder", "dataset": dataset, **block["retriever"]}
    _add(config, "products", f"{p}_gold_sft", {"kind": "query_sft_data", "dataset": dataset})
    _add(config, "models", f"{p}_gold", {**retriever, "queries": []})
    evaluated = [f"{p}_bm25", f"{p}_encoder", f"{p}_gold"]
    current, last_prefs = f"{p}_gold", None
    for r in range(1, rounds + 1):
        qgen = f"{p}_qgen_r{r}"
        if r == 1:
            sft = {"init": block["generator"], "data": f"{p}_gold_sft"}
        else:
            _add(
                config, "products", f"{p}_sft_r{r}", {"kind": "query_sft_data", "from": last_prefs}
            )
            # The previous round's kept queries come sorted easy to hard: keep that order.
            sft = {"init": f"{p}_qgen_r{r - 1}", "data": f"{p}_sft_r{r}", "sampling": "sequential"}
        _add(config, "models", qgen, {**block["query_sft"], "kind": "sft", **sft})
        queries = f"{p}_queries_r{r}"
        writer = {"kind": "pseudo_queries", "model": qgen, "dataset": dataset}
        _add(config, "products", queries, {**block["queries"], **writer})
        _add(config, "models", f"{p}_r{r}_all", {**retriever, "queries": [queries]})
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
                _add(config, "models", model, {**retriever, "queries": [source]})
                evaluated.append(model)
            last = source
        if block["colbert"] is not None:
            colbert = {"kind": "colbert", "dataset": dataset, "candidates": f"{p}_bm25",
                       **block["colbert"], "queries": [last]}  # fmt: skip
            _add(config, "models", f"{p}_r{r}_colbert", colbert)
            evaluated.append(f"{p}_r{r}_colbert")
        last_prefs = f"{p}_prefs_r{r}"
        prefs = {"kind": "query_preferences", "from": last, "retriever": last}
        _add(config, "products", last_prefs, {**block["preferences"], **prefs})
        current = last
    config.setdefault("evaluate_retrieval", [])
    config["evaluate_retrieval"] = [
        *(config["evaluate_retrieval"] or []),
        {"dataset": dataset, "retrievers": evaluated, **block["evaluate"]},
    ]
