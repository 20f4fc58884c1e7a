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

from ragtrain.judge import JUDGE_DEFAULTS
from ragtrain.products import PAIRS_DEFAULTS, SFT_DEFAULTS
from ragtrain.seeds import DEFAULT_SEED
from ragtrain.train import TRAIN_DEFAULTS
from ragtrain.world import WorldConfig

NO_RETRIEVAL = "none"


class ConfigError(ValueError):
    """A config problem, with the dotted key it concerns."""

    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(f"config key {key}: {reason}")


# Defaults for the entries of each user-named section, per kind where kinds differ.
CORPUS_DEFAULTS: dict[str, Any] = {"format": "beir"}
RETRIEVER_DEFAULTS: dict[str, dict[str, Any]] = {
    "bm25": {"k": 3, "k1": 1.5, "b": 0.75, "method": "lucene", "stopwords": "en"},
    "dense": {
        "k": 3,
        "encoder": "all-MiniLM-L6-v2",
        "batch_size": 64,
        "query_prefix": "",
        "passage_prefix": "",
    },
}
DATASET_DEFAULTS: dict[str, Any] = {"format": "auto", "limit": None}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "base": {"dtype": "bfloat16", "trust_remote_code": False, "revision": None},
    **TRAIN_DEFAULTS,
}
# Which product kind a trained model's `data` must be.
TRAINING_DATA = {"sft": "sft_data", "dpo": "preference_pairs"}
PRODUCT_DEFAULTS: dict[str, dict[str, Any]] = {
    # prompt: `rag`, or `closed_book` for `retrieval: none` (filled in _fill_nodes).
    "self_demos": {"n": 4, "shard_size": 64},
    "judge": JUDGE_DEFAULTS,
    "sft_data": SFT_DEFAULTS,
    "preference_pairs": PAIRS_DEFAULTS,
}
# What each product kind is made from (its `from`), where it is made from a product.
PRODUCT_SOURCES = {"judge": "self_demos", "sft_data": "judge", "preference_pairs": "judge"}
GENERATION_DEFAULTS: dict[str, Any] = {
    "backend": "vllm",
    "max_new_tokens": 32,
    "temperature": 0.0,
    "top_p": 1.0,
    "top_k": -1,
    "batch_size": 16,
    "seed": DEFAULT_SEED,
    # auto / null: chosen for the device by ragtrain.generation.device_defaults.
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
    "datasets": {"world": "worlds"},
    "products": {
        "from": "products",
        "model": "models",
        "dataset": "datasets",
        "retrieval": "retrievers",
    },
    "models": {"init": "models", "data": "products"},
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
    if kind not in defaults:
        raise ConfigError(
            f"{section}.{name}.kind", f"expected one of {sorted(defaults)}, got {kind!r}"
        )


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
        source = _one_source("datasets", name, node, ("world", "path"))
        if source == "world" and not node.get("split"):
            raise ConfigError(f"datasets.{name}.split", "a dataset from a world needs a split")
        config["datasets"][name] = _merge(DATASET_DEFAULTS, node)
    for name, node in config["models"].items():
        kind = node.setdefault("kind", "base")
        _kind("models", name, kind, MODEL_DEFAULTS)
        if kind == "base":
            _one_source("models", name, node, ("gguf", "path", "hub"))
        else:
            _require("models", name, node, ("init", "data"), f"{kind} model")
        config["models"][name] = _merge(_seeded(MODEL_DEFAULTS[kind], seed), node)
    config["generation"] = _merge(
        {**GENERATION_DEFAULTS, "seed": seed}, config.get("generation") or {}
    )
    for name, node in config["products"].items():
        kind = node.get("kind")
        _kind("products", name, kind, PRODUCT_DEFAULTS)
        needed = ("from",) if kind in PRODUCT_SOURCES else ("model", "dataset", "retrieval")
        _require("products", name, node, needed, f"{kind} product")
        filled = _merge(_seeded(PRODUCT_DEFAULTS[kind], seed), node)
        if kind == "self_demos":
            filled.setdefault(
                "prompt", "closed_book" if node["retrieval"] == NO_RETRIEVAL else "rag"
            )
            # Sampling settings: the run's generation settings under the product's own.
            filled["generation"] = _merge(config["generation"], node.get("generation") or {})
        config["products"][name] = filled


def _check_references(config: dict) -> None:
    for section, fields in REFERENCES.items():
        for name, node in config[section].items():
            for field, target in fields.items():
                ref = node.get(field)
                if ref is None or ref in config[target]:
                    continue
                if target == "retrievers" and ref == NO_RETRIEVAL:
                    continue  # closed book
                known = ", ".join(sorted(config[target])) or "none"
                raise ConfigError(
                    f"{section}.{name}.{field}",
                    f"unknown {target[:-1] if target != 'corpora' else 'corpus'} "
                    f"{ref!r} (known: {known})",
                )
    # Products and trained models read the kind of product they are built from.
    for section, field, wanted_kinds, verb in (
        ("products", "from", PRODUCT_SOURCES, "product is made from"),
        ("models", "data", TRAINING_DATA, "model trains on"),
    ):
        for name, node in config[section].items():
            wanted = wanted_kinds.get(node["kind"])
            found = config["products"][node[field]]["kind"] if wanted else None
            if found != wanted:
                raise ConfigError(
                    f"{section}.{name}.{field}",
                    f"a {node['kind']} {verb} a {wanted} product, not {node[field]!r} ({found})",
                )
    # A world-backed dataset needs its split to exist in that world.
    for name, node in config["datasets"].items():
        if node.get("world") is not None:
            splits = config["worlds"][node["world"]]["questions"]
            if node["split"] not in splits:
                raise ConfigError(
                    f"datasets.{name}.split",
                    f"world {node['world']!r} has no split {node['split']!r} "
                    f"(splits: {', '.join(splits)})",
                )


def _check_cycles(config: dict) -> None:
    """Reject references that loop: a model initialised from itself, or a model whose
    training data is sampled from that very model (across sections)."""

    def edges(section: str, name: str):
        for field, target in REFERENCES.get(section, {}).items():
            ref = config[section][name].get(field)
            if ref is not None and ref in config[target]:
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
                    }
    return list(nodes.values())


def prepare(config: dict, prompts_dir: Path | None = None) -> dict:
    """Return a copy of a schema-validated config with node defaults filled and references checked.

    Adds `evaluations`: the flat list of evaluation nodes. With `prompts_dir`, the prompt
    templates that evaluations name must exist there.
    """
    config = copy.deepcopy(config)
    for section in SECTIONS:
        config[section] = config.get(section) or {}
    _fill_nodes(config)
    _check_references(config)
    _check_cycles(config)
    if prompts_dir is not None:
        for name, node in config["products"].items():
            if "prompt" in node and not (prompts_dir / f"{node['prompt']}.jinja").is_file():
                raise ConfigError(
                    f"products.{name}.prompt",
                    f"no template {node['prompt']}.jinja in {prompts_dir}",
                )
    config["evaluations"] = _expand_evaluate(config, prompts_dir)
    return config
