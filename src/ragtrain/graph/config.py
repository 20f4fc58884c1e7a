"""The config graph: named nodes that refer to each other by name.

Snakemake's `validate(..., set_default=True)` fills defaults only under schema
`properties`, not inside user-named maps (datasets, models, ...), so this module
fills those, checks every cross-reference and rejects cycles. It runs when the
Snakefile is parsed, so a bad config stops the run before any job, with the
offending key in the message.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
import site
import sysconfig
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from ragtrain.core.seeds import DEFAULT_SEED
from ragtrain.core.settings import merge
from ragtrain.data.beir import WORLD_TASK_DEFAULTS
from ragtrain.data.world import WorldConfig
from ragtrain.generation.backtracking import STEP_PRODUCTS, check_step_template
from ragtrain.generation.query_augment import check_strategies as check_augment
from ragtrain.generation.query_augment import template_name as augment_template
from ragtrain.generation.strategies import (
    USER_TEMPLATES,
    check_strategies,
    filled_strategies,
    searches_of,
    templates_of,
)
from ragtrain.graph.kinds import (
    BUILTIN_JUDGES,
    DEEPSPEED_KINDS,
    EVALUATE_DEFAULTS,
    GENERATING_PRODUCTS,
    GENERATION_DEFAULTS,
    INDEXED_RETRIEVERS,
    KINDS,
    LAUNCHED_KINDS,
    LLM_KINDS,
    NO_RETRIEVAL,
    QUERY_PRODUCTS,
    RETRIEVAL_EVAL_DEFAULTS,
    RETRIEVER_MODELS,
    RL_MODELS,
    SECTIONS,
    SOURCE_RETRIEVAL,
    ConfigError,
    check_keys,
    kind_of,
)
from ragtrain.judges.model import JUDGE_KINDS, check_judge
from ragtrain.judges.rules import RULES
from ragtrain.recipes import RECIPES
from ragtrain.training.rewards import ANSWERLESS_SOURCES, check_specs, reward_models
from ragtrain.training.toolkit import check_quantization

__all__ = [
    "ConfigError",
    "ConfigFileError",
    "check_config",
    "check_keys",
    "check_params",
    "load_config_file",
    "missing_paths",
    "prepare",
]

# Which fields of a node name another node, in which section: every kind's, by section
# (products before models: a cycle is reported from the data that closes it).
REFERENCES: dict[str, dict[str, str]] = {
    section: {
        field: target
        for (sec, _), kind in KINDS.items()
        if sec == section
        for field, (target, _) in kind.refs.items()
    }
    for section in ("corpora", "retrievers", "datasets", "products", "models", "judges")
}


def _one_source(section: str, name: str, node: dict, choices: tuple[str, ...]) -> str:
    given = [c for c in choices if node.get(c) is not None]
    if len(given) != 1:
        raise ConfigError(
            f"{section}.{name}",
            f"give exactly one of {', '.join(choices)} (got {', '.join(given) or 'none'})",
        )
    return given[0]


def _require(section: str, name: str, node: dict, fields: tuple[str, ...], what: str) -> None:
    for field in fields:
        if not node.get(field):
            raise ConfigError(f"{section}.{name}.{field}", f"a {what} needs {field}")


def _fill_nodes(config: dict) -> None:
    """Every node over its kind's defaults (ragtrain.graph.kinds), after its kind, keys,
    sources and required fields are checked."""
    # The top-level seed is the default seed of every world, of generation and of every
    # kind that has a seed.
    seed = config.setdefault("seed", DEFAULT_SEED)
    config["generation"] = merge(
        {**GENERATION_DEFAULTS, "seed": seed}, config.get("generation") or {}
    )
    check_keys(config)
    for section in SECTIONS:
        for name, node in config[section].items():
            kind = kind_of(section, node)
            source = _one_source(section, name, node, kind.one_of) if kind.one_of else None
            what = "BEIR dataset" if kind.name == "beir" else f"{node.get('kind')} {section[:-1]}"
            _require(section, name, node, kind.required, what)
            config[section][name] = _filled(config, section, name, node, kind, source, seed)


def _filled(config: dict, section: str, name: str, node: dict, kind, source, seed: int) -> dict:
    """A node over its defaults, with what a few kinds take from elsewhere."""
    if section == "worlds":
        # Shallow: a world's `questions` replaces the default splits, not adds to them.
        world = {**asdict(WorldConfig()), "seed": seed, **node}
        try:
            WorldConfig.from_dict(world)
        except ValueError as e:
            raise ConfigError(f"worlds.{name}", str(e)) from None
        return world
    if kind.name == "qa" and source == "world" and not node.get("split"):
        raise ConfigError(f"datasets.{name}.split", "a dataset from a world needs a split")
    if kind.name == "beir" and source == "world":
        # A synthetic task: its splits are those it makes queries for.
        defaults = {**WORLD_TASK_DEFAULTS, "seed": seed}
        return merge(defaults, {**node, "splits": list(node.get("queries") or defaults["queries"])})
    filled = kind.filled(node, seed)
    if "tracking" in kind.defaults and "tracking" not in node:
        # The run's experiment trackers, unless the node names its own.
        filled["tracking"] = list(config.get("tracking") or [])
    if kind.name in RL_MODELS:
        # PPO over a BEIR task's passages writes queries: the doc -> query prompt.
        passages = (config["datasets"].get(filled["dataset"]) or {}).get("kind") == "beir"
        default = "doc2query" if passages else _default_prompt(filled["retrieval"])
        filled.setdefault("prompt", default)
    if kind.name in ("self_demos", "segment_beam"):
        filled.setdefault("retrieval", NO_RETRIEVAL)
    if kind.name in ("self_demos", "segment_beam", "reference_sft"):
        filled.setdefault("prompt", _default_prompt(filled["retrieval"]))
    if kind.name == "self_demos":
        problem = check_strategies(filled["strategies"], filled["searches"])
        if problem:
            raise ConfigError(f"products.{name}.{problem[0]}", problem[1])
        # Spelled out (`paper` expanded, defaults filled): the rule reads what they name.
        filled["strategies"] = filled_strategies(filled)
    if kind.name == "prompt_search":
        filled.setdefault("retrieval", NO_RETRIEVAL)
        filled.setdefault("prompt", USER_TEMPLATES[filled["retrieval"] != NO_RETRIEVAL])
    if kind.generates:
        # Sampling settings: the run's generation settings under the node's own.
        filled["generation"] = merge(config["generation"], node.get("generation") or {})
    return filled


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
            for i, spec in enumerate(node["rewards"]):
                if spec.get("nli"):
                    _nli_judge(config, f"{key}[{i}].nli", spec["nli"])
            _check_passage_rewards(config, section, name, node)
        if section == "products":
            for name, node in config[section].items():
                if node["kind"] == "reward":
                    _reward_model(config, f"products.{name}.model", node["model"])


def _over_passages(config: dict, section: str, node: dict) -> bool:
    """A PPO node whose prompts are a BEIR task's passages (a query writer's RL)."""
    dataset = config["datasets"].get(node.get("dataset")) or {}
    return section == "models" and node["kind"] == "ppo" and dataset.get("kind") == "beir"


def _check_passage_rewards(config: dict, section: str, name: str, node: dict) -> None:
    """Passage prompts have no gold answer and a source passage: their rewards read no
    answer, and only they can be ranked (retrieval_rank) by a retriever of their corpus."""
    key = f"{section}.{name}"
    passages = _over_passages(config, section, node)
    if passages and node.get("retrieval") != NO_RETRIEVAL:
        raise ConfigError(
            f"{key}.retrieval", "prompts from a BEIR task's passages retrieve nothing: `none`"
        )
    if not passages and node.get("docs") is not None:
        raise ConfigError(f"{key}.docs", "samples a beir dataset's passages: not for QA prompts")
    for i, spec in enumerate(node["rewards"]):
        where = f"{key}.rewards[{i}]"
        if passages and spec["kind"] not in ANSWERLESS_SOURCES:
            raise ConfigError(
                f"{where}.kind",
                f"{spec['kind']!r} reads gold answers, which a BEIR task's passages lack"
                f" (sources for passage prompts: {', '.join(ANSWERLESS_SOURCES)})",
            )
        if spec["kind"] != "retrieval_rank":
            continue
        if not passages:
            raise ConfigError(
                f"{where}.kind",
                "retrieval_rank ranks a prompt's source passage: only a ppo model over a"
                " beir dataset's passages has one",
            )
        ref = spec["retriever"]
        found = config["models"].get(ref)
        if found is None or found["kind"] != "biencoder":
            known = sorted(_retriever_models(config))
            raise ConfigError(
                f"{where}.retriever",
                f"expected a biencoder model, got {ref!r} ({(found or {}).get('kind', 'unknown')};"
                f" biencoders: {', '.join(known) or 'none'})",
            )
        corpus = config["datasets"][node["dataset"]]["corpus"]
        theirs = config["datasets"][found["dataset"]]["corpus"]
        if theirs != corpus:
            raise ConfigError(
                f"{where}.retriever",
                f"{ref!r} ranks passages of corpus {theirs!r}, the prompts come from {corpus!r}",
            )


def _nli_judge(config: dict, key: str, name) -> None:
    found = config["judges"].get(name)
    if found is None or found["kind"] != "nli":
        known = ", ".join(sorted(n for n, j in config["judges"].items() if j["kind"] == "nli"))
        raise ConfigError(key, f"expected an nli judge (known: {known or 'none'}), got {name!r}")


def _check_preferences(config: dict) -> None:
    """DPA-RAG's nodes: what reranks what, label sets, strategies, loss weights."""
    for name, node in config["retrievers"].items():
        if node["kind"] != "rerank":
            continue
        first = config["retrievers"][node["first"]]["kind"]
        if first not in INDEXED_RETRIEVERS:
            raise ConfigError(
                f"retrievers.{name}.first",
                f"a rerank retriever reorders a {' or '.join(INDEXED_RETRIEVERS)} retriever's"
                f" list, not {node['first']!r} ({first})",
            )
        reranker = node.get("reranker")
        if reranker is not None and config["models"][reranker]["kind"] != "reranker":
            raise ConfigError(
                f"retrievers.{name}.reranker",
                f"expected a reranker model, got {reranker!r}"
                f" ({config['models'][reranker]['kind']})",
            )
        if node["n"] < node["k"]:
            raise ConfigError(
                f"retrievers.{name}.n", f"reranks {node['n']} candidates but keeps k={node['k']}"
            )
    for name, node in config["products"].items():
        key = f"products.{name}"
        if node["kind"] == "doc_preferences":
            if node["retrieval"] == NO_RETRIEVAL:
                raise ConfigError(f"{key}.retrieval", "labels need retrieved documents, not `none`")
            both = set(node["positive"]) & set(node["negative"])
            if both:
                raise ConfigError(
                    f"{key}.negative", f"{sorted(both)[0]!r} is also among `positive`"
                )
        if node["kind"] == "query_augment":
            problem = check_augment(node["augment"], node["nli_checked"])
            if problem:
                raise ConfigError(f"{key}.{problem[0]}", problem[1])
            if node.get("nli") is not None:
                _nli_judge(config, f"{key}.nli", node["nli"])
    for name, node in config["models"].items():
        if node["kind"] != "reranker":
            continue
        unknown = [loss for loss in node["weights"] or {} if loss not in node["losses"]]
        if unknown:
            raise ConfigError(
                f"models.{name}.weights",
                f"weighs {unknown[0]!r}, which is not among `losses` ({', '.join(node['losses'])})",
            )


def _check_dense_indexes(config: dict) -> None:
    """A dense retriever's FAISS settings that contradict each other (what needs the corpus
    size or the encoder's dimension is checked when the index is built)."""
    for name, node in config["retrievers"].items():
        if node["kind"] != "dense" or node["index"] not in ("ivf_flat", "ivf_pq"):
            continue
        nlist, train = node["nlist"], node["train_size"]
        if nlist is not None and train is not None and train < nlist:
            raise ConfigError(
                f"retrievers.{name}.train_size",
                f"{train} training vectors for nlist={nlist} lists: at least one each",
            )
        if node["index"] == "ivf_pq" and train is not None and train < 2 ** node["nbits"]:
            raise ConfigError(
                f"retrievers.{name}.train_size",
                f"{train} training vectors for 2^{node['nbits']} centroids per sub-quantizer",
            )


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
        if p["kind"]
        in (
            "self_demos",
            "pseudo_queries",
            "segment_beam",
            "prompt_search",
            "doc_preferences",
            "query_augment",
        )
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


def _check_source(config: dict, key: str, dataset: str) -> None:
    """`retrieval: source` needs a dataset with documents of its own."""
    found = config["datasets"].get(dataset) or {}
    # A world's ALCE-shaped splits carry their documents; its other questions do not.
    alce = (config["worlds"].get(found.get("world")) or {}).get("alce") or {}
    if found.get("world") and found.get("split") not in alce:
        raise ConfigError(
            key,
            f"dataset {dataset!r} is a world's question split: it has no documents of its"
            " own for retrieval `source` (a world's `alce` splits have)",
        )


def _check_references(config: dict) -> None:
    for reserved in (NO_RETRIEVAL, SOURCE_RETRIEVAL):
        if reserved in config["retrievers"]:
            raise ConfigError(
                f"retrievers.{reserved}",
                f"{reserved!r} is a retrieval setting (`none`: closed book, `source`: the"
                " dataset's own documents), not a retriever's name",
            )
    for section, fields in REFERENCES.items():
        for name, node in config[section].items():
            for field, target in fields.items():
                for ref in _refs(node.get(field)):
                    if ref in config[target]:
                        continue
                    if target == "retrievers" and ref == NO_RETRIEVAL:
                        continue  # closed book
                    if target == "retrievers" and ref == SOURCE_RETRIEVAL:
                        key = f"{section}.{name}.{field}"
                        _check_source(config, key, node.get("dataset"))
                        continue  # the dataset's own documents
                    known = ", ".join(sorted(config[target])) or "none"
                    raise ConfigError(
                        f"{section}.{name}.{field}",
                        f"unknown {target[:-1] if target != 'corpora' else 'corpus'} "
                        f"{ref!r} (known: {known})",
                    )
    # Products and trained models read the kinds of product they are built from.
    for section, field, verb in (
        ("datasets", "from", "dataset is made from"),
        ("products", "from", "product is made from"),
        ("products", "pairs", "product mixes"),
        ("models", "data", "model trains on"),
        ("models", "queries", "trains on"),
    ):
        for name, node in config[section].items():
            _, wanted = kind_of(section, node).refs.get(field, (None, ()))
            for ref in _refs(node.get(field)) if wanted else []:
                found = config["products"][ref]["kind"]
                if found not in wanted:
                    raise ConfigError(
                        f"{section}.{name}.{field}",
                        f"a {node['kind']} {verb} a {' or '.join(wanted)} product,"
                        f" not {ref!r} ({found})",
                    )
    # A judge named by a node is of a kind that node reads.
    for section in ("products", "models"):
        for name, node in config[section].items():
            for field, (target, wanted) in kind_of(section, node).refs.items():
                ref = node.get(field)
                if target == "judges" and ref is not None:
                    found = config["judges"][ref]["kind"]
                    if found not in wanted:
                        raise ConfigError(
                            f"{section}.{name}.{field}",
                            f"expected a {' or '.join(wanted)} judge, got {ref!r} ({found})",
                        )
    _check_strategy_searches(config)
    _check_tasks(config)
    # A world-backed QA dataset needs its split to exist in that world.
    for name, node in config["datasets"].items():
        if node.get("world") is not None and node["kind"] == "qa":
            world = config["worlds"][node["world"]]
            splits = [*world["questions"], *(world.get("alce") or {})]
            if node["split"] not in splits:
                raise ConfigError(
                    f"datasets.{name}.split",
                    f"world {node['world']!r} has no split {node['split']!r} "
                    f"(splits: {', '.join(splits)})",
                )


def _check_strategy_searches(config: dict) -> None:
    """A strategy's `search` names a prompt_search product."""
    for name, node in config["products"].items():
        for i, strategy in enumerate(node.get("strategies") or []):
            ref = strategy.get("search")
            if ref is None:
                continue
            found = config["products"].get(ref, {}).get("kind")
            if found != "prompt_search":
                known = sorted(n for n, p in config["products"].items()
                               if p["kind"] == "prompt_search")  # fmt: skip
                raise ConfigError(
                    f"products.{name}.strategies[{i}].search",
                    f"expected a prompt_search product, got {ref!r} ({found or 'unknown'};"
                    f" prompt searches: {', '.join(known) or 'none'})",
                )


def templates_read(node: dict) -> list[str]:
    """The templates a product reads beside its `prompt` (strategies, prompt search)."""
    if node["kind"] == "self_demos":
        return templates_of(node["strategies"] or [])
    if node["kind"] == "prompt_search":
        return [*node["seeds"], node["critique_prompt"], node["rewrite_prompt"]]
    if node["kind"] == "doc_preferences":
        return [node["closed_book_prompt"]]
    if node["kind"] == "query_augment":
        return [augment_template(s) for s in node["augment"]]
    return []


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
        if node.get("dataset"):
            # The dataset kind its kind's reference names (a QA set, or a BEIR task).
            wanted = KINDS[("products", node["kind"])].refs["dataset"][1]
            _dataset_kind(config, f"products.{name}.dataset", node["dataset"], wanted[0])
    for name, node in config["models"].items():
        if node["kind"] in RL_MODELS and not _over_passages(config, "models", node):
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
        node = config[section][name]
        for field, target in REFERENCES.get(section, {}).items():
            for ref in _refs(node.get(field)):
                if ref in config[target]:
                    yield target, ref
        for ref in searches_of(node.get("strategies") or []) if section == "products" else []:
            yield "products", ref

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
        entry = merge(EVALUATE_DEFAULTS, entry)
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
            if ref not in (NO_RETRIEVAL, SOURCE_RETRIEVAL) and ref not in config["retrievers"]:
                known = ", ".join([*sorted(config["retrievers"]), NO_RETRIEVAL, SOURCE_RETRIEVAL])
                raise ConfigError(
                    f"evaluate[{i}].retrieval", f"unknown retriever {ref!r} (known: {known})"
                )
            for dataset in entry["datasets"] if ref == SOURCE_RETRIEVAL else []:
                _check_source(config, f"evaluate[{i}].retrieval", dataset)
        if prompts_dir is not None:
            for field in ("prompt", "closed_book_prompt"):
                if not (prompts_dir / f"{entry[field]}.jinja").is_file():
                    raise ConfigError(
                        f"evaluate[{i}].{field}",
                        f"no template {entry[field]}.jinja in {prompts_dir}",
                    )
        steps = entry.get("answer_format") == "steps"
        if steps and NO_RETRIEVAL in entry["retrieval"]:
            raise ConfigError(
                f"evaluate[{i}].answer_format",
                "the step format reads retrieved documents: not with retrieval `none`",
            )
        if steps and prompts_dir is not None:
            _check_step_template(f"evaluate[{i}].prompt", prompts_dir, entry["prompt"])
        generation = merge(config["generation"], entry.get("generation") or {})
        judges = _evaluation_judges(config, entry, i)
        if entry.get("nli"):
            _nli_judge(config, f"evaluate[{i}].nli", entry["nli"])
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
                        **({"answer_format": "steps"} if steps else {}),
                        **({"judges": judges} if judges else {}),
                        **({"nli": entry["nli"]} if entry.get("nli") else {}),
                        **({"resources": entry["resources"]} if entry.get("resources") else {}),
                    }
    return list(nodes.values())


def prepare(config: dict, prompts_dir: Path | None = None) -> dict:
    """Return a copy of a schema-validated config with node defaults filled and references checked.

    Expands recipe blocks (ragtrain.recipes) into their nodes first. Adds
    `evaluations` and `retrieval_evaluations`: the flat lists of evaluation nodes. With
    `prompts_dir`, the prompt templates that nodes name must exist there.
    """
    config = copy.deepcopy(config)
    for section in SECTIONS:
        config[section] = config.get(section) or {}
    config["judges"] = {**BUILTIN_JUDGES, **config["judges"]}
    for key, expand in RECIPES.items():
        if config.get(key):
            expand(config)
    config["retrieval_evaluations"] = _expand_evaluate_retrieval(config)
    config["retrieval_pairs"] = _retrieval_pairs(config)
    _fill_nodes(config)
    _check_references(config)
    _check_rewards(config)
    _check_language_models(config)
    _check_preferences(config)
    _check_dense_indexes(config)
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
                for template in templates_read(node) if section == "products" else []:
                    if not (prompts_dir / f"{template}.jinja").is_file():
                        raise ConfigError(
                            f"{section}.{name}",
                            f"names template {template!r}: no {template}.jinja in {prompts_dir}",
                        )
        _check_judges(config, prompts_dir)
        _check_closed_book(config, prompts_dir)
        for name, node in config["products"].items():
            if node["kind"] in STEP_PRODUCTS:
                _check_step_template(f"products.{name}.prompt", prompts_dir, node["prompt"])
    config["evaluations"] = _expand_evaluate(config, prompts_dir)
    _fill_tensor_parallel(config)
    return config


def _check_step_template(key: str, prompts_dir: Path, name: str) -> None:
    """A step template's macros write steps that its parser reads back."""
    path = prompts_dir / f"{name}.jinja"
    problem = check_step_template(path) if path.is_file() else f"no template {path.name}"
    if problem:
        raise ConfigError(key, problem)


def _check_closed_book(config: dict, prompts_dir: Path) -> None:
    """A closed-book node (`retrieval: none`) does not prompt with a template that reads
    retrieved documents: it would show the model an empty list of them."""
    prompts = [
        (f"{section}.{name}.prompt", node["prompt"])
        for section in ("products", "models")
        for name, node in config[section].items()
        if node.get("retrieval") == NO_RETRIEVAL and node.get("prompt")
    ]
    prompts += [
        (f"evaluate[{i}].closed_book_prompt", entry["closed_book_prompt"])
        for i, entry in enumerate(config.get("evaluate") or [])
        if NO_RETRIEVAL in entry.get("retrieval", []) and entry.get("closed_book_prompt")
    ]
    for key, prompt in prompts:
        if "docs" in _template_variables(prompts_dir / f"{prompt}.jinja"):
            raise ConfigError(
                key,
                f"template {prompt!r} reads retrieved documents, but retrieval is `none`"
                " (closed book: closed_book, or give a retriever)",
            )


@functools.cache
def _template_variables(path: Path) -> frozenset[str]:
    import jinja2
    import jinja2.meta

    if not path.is_file():
        return frozenset()
    parsed = jinja2.Environment().parse(path.read_text(encoding="utf-8"))
    return frozenset(jinja2.meta.find_undeclared_variables(parsed))


def _check_judges(config: dict, prompts_dir: Path) -> None:
    """A model judge's template reads what its kind needs; its regex has a group."""
    for name, node in config["judges"].items():
        if node["kind"] in JUDGE_KINDS:
            problem = check_judge(node["kind"], node, prompts_dir / f"{node['prompt']}.jinja")
            if problem:
                key, _, reason = problem.partition(": ")
                raise ConfigError(f"judges.{name}.{key}", reason)


def _evaluation_judges(config: dict, entry: dict, i: int) -> dict:
    """An evaluate entry's label and relevance judges ({} where both are the rules)."""
    judges = {}
    for role, kind in (("label", "label"), ("relevance", "relevance")):
        key = f"{role}_judge"
        name = entry.get(key, RULES)
        if name not in config["judges"]:
            known = ", ".join(sorted(config["judges"]))
            raise ConfigError(f"evaluate[{i}].{key}", f"unknown judge {name!r} (known: {known})")
        found = config["judges"][name]["kind"]
        if found not in (RULES, kind):
            raise ConfigError(
                f"evaluate[{i}].{key}", f"expected a {kind} judge or rules, got {name!r} ({found})"
            )
        judges[role] = name
    return judges if set(judges.values()) != {RULES} else {}


def _check_launch(config: dict) -> None:
    for name, node in config["models"].items():
        kind, stages = node["kind"], DEEPSPEED_KINDS.get(node["kind"], ())
        if node.get("deepspeed") and node["deepspeed"] not in stages:
            allowed = f"one of {list(stages)}" if stages else "no DeepSpeed config"
            raise ConfigError(f"models.{name}.deepspeed", f"a {kind} model takes {allowed}")
        try:
            check_quantization(node)
        except ValueError as e:
            raise ConfigError(f"models.{name}.quantization", str(e).partition(": ")[2]) from None
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
        if node["kind"] in (*QUERY_PRODUCTS, "query_sft_data"):
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
        ref = node.get("retriever") if node["kind"] in QUERY_PRODUCTS else None
        if ref is not None and config["models"][ref]["kind"] != "biencoder":
            raise ConfigError(
                f"products.{name}.retriever",
                f"expected a biencoder model, got {ref!r} ({config['models'][ref]['kind']})",
            )


def _expand_evaluate_retrieval(config: dict) -> list[dict]:
    """One node per (retriever, dataset, split) of the `evaluate_retrieval` entries."""
    nodes, seen = [], {}
    for i, entry in enumerate(config.get("evaluate_retrieval") or []):
        # The default cutoffs stop at the run's depth; cutoffs given must not pass it.
        depth = entry.get("k", RETRIEVAL_EVAL_DEFAULTS["k"])
        default = [c for c in RETRIEVAL_EVAL_DEFAULTS["cutoffs"] if c <= depth]
        entry = {**RETRIEVAL_EVAL_DEFAULTS, "cutoffs": default, **entry}
        # A measure at a rank past the run's depth would count passages never retrieved.
        beyond = [c for c in entry["cutoffs"] if c > entry["k"]]
        if beyond:
            raise ConfigError(
                f"evaluate_retrieval[{i}].cutoffs",
                f"{beyond} beyond k ({entry['k']}): the run holds k passages per query",
            )
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
                    "cutoffs": sorted(entry["cutoffs"]),
                }
            )
    return nodes


def _retrieval_pairs(config: dict) -> list[dict]:
    """The retriever pairs the report compares (each `evaluate_retrieval` entry's
    `paired`): {key, dataset, split, a, b}, a and b among the entry's `retrievers`."""
    pairs = []
    for i, entry in enumerate(config.get("evaluate_retrieval") or []):
        seen: dict[frozenset, int] = {}
        for j, pair in enumerate(entry.get("paired") or []):
            key = f"evaluate_retrieval[{i}].paired[{j}]"
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ConfigError(key, f"expected a pair of retriever names, got {pair!r}")
            for name in pair:
                if name not in entry["retrievers"]:
                    raise ConfigError(
                        key,
                        f"{name!r} is not among the entry's retrievers"
                        f" ({', '.join(map(str, entry['retrievers']))})",
                    )
            a, b = pair
            if a == b:
                raise ConfigError(key, f"compares {a!r} with itself")
            if frozenset(pair) in seen:
                raise ConfigError(
                    key, f"compares {a} and {b} again (already paired[{seen[frozenset(pair)]}])"
                )
            seen[frozenset(pair)] = j
            split = entry.get("split", RETRIEVAL_EVAL_DEFAULTS["split"])
            pairs.append({"key": key, "dataset": entry["dataset"], "split": split, "a": a, "b": b})
    return pairs


# --------------------------------------------------------------------------- before the graph
# What `prepare` takes for granted, checked first (common.smk, `python -m ragtrain <stage>
# --params`): the config files' YAML, run and node names, each node's keys against its kind,
# and the schema's types and ranges, strictly. Every problem is one line naming the key
# (or `file:line`).

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PROMPTS = ROOT / "resources" / "prompts"
# Run and node names: they become folder names and wildcard values.
NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
NAME_RULE = "1 to 100 of the characters A-Z a-z 0-9 _ - (it names folders)"
# A number in exponent form without a dot (`1e-4`): YAML 1.1 (PyYAML, Snakemake) reads it
# as text, YAML 1.2 and JSON as a number. The config check reads it as a number wherever
# the schema takes one.
EXPONENT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")
_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "text",
    "boolean": "true or false",
    "object": "a map",
    "array": "a list",
    "null": "null",
}


class ConfigFileError(ValueError):
    """A config file that is not a config: `path:line:column: what is wrong`."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one map (PyYAML keeps the
    last silently) and reading `1e-4` as a number (as YAML 1.2 does)."""

    path = "<config>"

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue  # `<<: *anchor` keys may be given again beside it
                line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    raise ConfigFileError(
                        f"{self.path}:{line}: key {key_node.value!r} given twice in one map"
                        f" (first at line {seen[key_node.value]}); YAML would keep the last"
                    )
                seen[key_node.value] = line
        return super().construct_mapping(node, deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(f"^{EXPONENT.pattern}$"), list("-+0123456789.")
)


def load_config_file(path: str | Path) -> dict:
    """A config file (YAML or JSON) as a dict; a ConfigFileError at `path:line:column`
    where it cannot be read, is not YAML, gives a key twice, or is not a map."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigFileError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8"
        ) from None
    loader = _StrictLoader(text)
    loader.path = str(path)
    try:
        config = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        context = f" ({e.context})" if e.context and e.problem else ""
        raise ConfigFileError(
            f"{where}: YAML syntax error: {e.problem or e.context}{context}"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigFileError(f"{path}: YAML error: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()
    if not isinstance(config, dict):
        raise ConfigFileError(
            f"{path}: expected a map of config keys at the top, got {_type_of(config)}"
        )
    return config


def check_config(config: dict, schema: str | Path = SCHEMA) -> None:
    """Everything before the graph, in place: names, each node's keys against its kind
    (with the default kinds set), then the schema's types and ranges (strictly: an integer
    field refuses 2.0; `1e-4` written as text is read as a number). A ConfigError names
    the key."""
    if not isinstance(config, dict):
        raise ConfigError("(top level)", f"expected a map of config keys, got {_type_of(config)}")
    _check_names(config)
    check_keys(config)
    errors = _schema_errors(config, _schema(str(schema)))
    if errors:
        import jsonschema

        raise ConfigError(*_problem(jsonschema.exceptions.best_match(errors)))


def check_params(stage: str, params: dict, schema: str | Path = SCHEMA) -> None:
    """A stage's `--params` when it is run alone: each key the config's schema describes
    for the nodes that stage runs is checked as the config check does (types, ranges,
    lists of choices; `1e-4` as text read as a number, in place). A ValueError names the
    key. Keys the config check adds (filled defaults, resolved paths) are left alone."""
    if not Path(schema).is_file():
        return  # an installed package without the workflow: nothing to check against
    full = _schema(str(schema))["properties"]
    properties: dict[str, Any] = {"generation": full["generation"]}
    for section in {k.section for k in KINDS.values() if k.stage == stage}:
        properties.update(full[section]["additionalProperties"].get("properties", {}))
    errors = _schema_errors(params, {"type": "object", "properties": properties})
    if errors:
        import jsonschema

        key, reason = _problem(jsonschema.exceptions.best_match(errors))
        raise ValueError(f"--params key {key}: {reason}")


def missing_paths(config: dict) -> list[ConfigError]:
    """The files and folders a prepared config names (`path`, `gguf`) that do not exist,
    relative to the working folder (a GGUF file also in site-packages, as the model
    loader looks for it)."""
    missing = []
    for section in SECTIONS:
        for name, node in config[section].items():
            path, gguf = node.get("path"), node.get("gguf")
            if isinstance(path, str) and not Path(path).exists():
                hint = (
                    " (a hub id goes under `hub:`)"
                    if section == "models" and re.fullmatch(r"[\w.-]+/[\w.-]+", path)
                    else ""
                )
                missing.append(
                    ConfigError(f"{section}.{name}.path", f"no such file or folder {path!r}{hint}")
                )
            if isinstance(gguf, str) and not _gguf_found(gguf):
                missing.append(
                    ConfigError(
                        f"{section}.{name}.gguf",
                        f"no GGUF file {gguf!r} here or in site-packages",
                    )
                )
    return missing


def _gguf_found(name: str) -> bool:
    roots = [Path.cwd(), Path(sysconfig.get_paths()["purelib"]), *map(Path, site.getsitepackages())]
    return any((root / name).is_file() for root in roots)


def _check_names(config: dict) -> None:
    run = config.get("run")
    if isinstance(run, str) and not NAME.fullmatch(run):
        raise ConfigError("run", f"expected {NAME_RULE}, got {_show(run)}")
    for section in SECTIONS:
        nodes = config.get(section)
        if nodes is None:
            continue
        if not isinstance(nodes, dict):
            raise ConfigError(section, f"expected a map of named nodes, got {_type_of(nodes)}")
        for name, node in nodes.items():
            if not isinstance(name, str) or not NAME.fullmatch(name):
                shown = name[:40] + "..." if isinstance(name, str) and len(name) > 40 else name
                raise ConfigError(
                    f"{section}.{shown}", f"a node's name is {NAME_RULE}, got {_show(name)}"
                )
            if isinstance(node, dict) and not isinstance(node.get("kind", ""), str):
                raise ConfigError(
                    f"{section}.{name}.kind", f"expected a kind's name, got {_show(node['kind'])}"
                )


@functools.cache
def _schema(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


@functools.cache
def _strict_validator():
    """Draft 2020-12 with integers that are ints (JSON schema counts 2.0 as one)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, type_checker=checker)


def _schema_errors(instance: dict, schema: dict) -> list:
    """The schema's errors, after reading numbers written as text (`1e-4`) as numbers."""
    validator = _strict_validator()(schema)
    while True:
        errors = list(validator.iter_errors(instance))
        numbers = [e for e in errors if _is_number_text(e)]
        if not numbers:
            return errors
        for error in numbers:
            *parents, last = error.absolute_path
            target = instance
            for step in parents:
                target = target[step]
            target[last] = float(error.instance)


def _is_number_text(error) -> bool:
    types = (
        error.validator_value
        if isinstance(error.validator_value, list)
        else [error.validator_value]
    )
    return (
        error.validator == "type"
        and "number" in types
        and isinstance(error.instance, str)
        and EXPONENT.fullmatch(error.instance.strip()) is not None
        and len(error.absolute_path) > 0
    )


def _problem(error) -> tuple[str, str]:
    """(key, reason) of a schema error, on one line."""
    path = list(error.absolute_path)
    value, rule, expected = error.instance, error.validator, error.validator_value
    if rule == "additionalProperties" and isinstance(value, dict):
        known = list(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        extra = [k for k in value if k not in known and not any(re.search(p, k) for p in patterns)]
        if extra:
            close = difflib.get_close_matches(str(extra[0]), known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            return _key([*path, extra[0]]), f"unknown key ({hint})"
    if rule == "required":
        missing = re.match(r"'(.*)' is a required property", error.message)
        if missing:
            return _key([*path, missing.group(1)]), "required, but not given"
    if rule == "type":
        types = expected if isinstance(expected, list) else [expected]
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        return _key(path), f"expected {words}, got {_show(value)}"
    if rule == "enum":
        return _key(path), f"expected one of {', '.join(map(str, expected))}; got {_show(value)}"
    bounds = {
        "minimum": "at least",
        "exclusiveMinimum": "more than",
        "maximum": "at most",
        "exclusiveMaximum": "less than",
    }
    if rule in bounds:
        return _key(path), f"expected {bounds[rule]} {expected}, got {_show(value)}"
    if rule == "minItems":
        return _key(path), f"expected at least {expected} item(s), got {len(value)}"
    if rule == "pattern":
        return _key(path), f"expected text matching {expected}, got {_show(value)}"
    if "propertyNames" in error.absolute_schema_path:
        return _key([*path, str(value)[:40]]), f"{_show(value)} is not an accepted name here"
    return _key(path), " ".join(error.message.split())[:200]


def _key(path: list) -> str:
    key = ""
    for step in path:
        key += f"[{step}]" if isinstance(step, int) else f".{step}" if key else str(step)
    return key or "(top level)"


def _show(value: Any) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"the text {shown}" if isinstance(value, str) else shown


def _type_of(value: Any) -> str:
    return {dict: "a map", list: "a list", str: "text", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def check_files(paths: list[str | Path], prompts_dir: Path = PROMPTS) -> dict:
    """Config files (merged in order, as Snakemake merges `--configfile`s) checked as
    common.smk checks them before the first job; the prepared config."""
    config: dict = {}
    for path in paths:
        config = merge(config, load_config_file(path))
    check_config(config)
    prepared = prepare(config, prompts_dir=prompts_dir)
    for missing in missing_paths(prepared):
        raise missing
    return prepared


def main(argv: list[str] | None = None) -> int:
    """`python -m ragtrain.graph.config FILE...`: check config files without Snakemake
    (which reports a YAML syntax error or a missing file without its line)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m ragtrain.graph.config", description=main.__doc__
    )
    parser.add_argument("configfile", nargs="+", help="YAML or JSON config files, merged in order")
    args = parser.parse_args(argv)
    try:
        prepared = check_files(args.configfile)
    except (ConfigError, ConfigFileError) as e:
        print(f"ragtrain config: error: {e}", file=sys.stderr)
        return 1
    nodes = sum(len(prepared[section]) for section in SECTIONS)
    print(f"{', '.join(map(str, args.configfile))}: ok (run {prepared['run']!r}, {nodes} nodes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
