"""The command line of every workflow stage, one module per family of stages.

Each module declares its stages' arguments next to their command functions and adds
them to the top parser with `register(stages)`; the commands parse, read, call the
domain modules and write. Only `ragtrain.__main__` imports this package: the layers
below never reach up into their command line.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

# The families in the workflow's order (`--help` lists them so): data, retrieval,
# models, the data models make, evaluation. A module added beside them (a new kind's or
# recipe's own stages) is found by name and listed after them.
ORDER = ("data", "retrieval", "training", "products", "queries", "evaluation")


# Each module's stages: running a stage imports its module alone, so that an env (envs/,
# one per rule) need hold only what its own stages import. A stage not listed (a new
# module's) is found by importing every module; tests/test_envs.py checks the table.
STAGES = {
    "data": ("world", "task", "corpus", "dataset"),
    "retrieval": ("index", "retrieve", "train-retriever", "evaluate-retrieval"),
    "training": ("base-model", "train", "train-reward-model", "train-rl", "export-gguf"),
    "products": (
        *("self-demos", "judge", "sft-data", "preference-pairs", "reference-sft"),
        *("reward", "best-of-n", "segment-beam"),
    ),
    "queries": ("pseudo-queries", "query-filter", "query-sft-data", "query-preferences"),
    "evaluation": ("evaluate", "report"),
    "backtracking": ("step-sft", "step-pairs", "pair-file", "pair-mix"),
    "demonstrations": ("prompt-search", "tournament"),
    "judging": ("judge-relevance", "judge-evaluation"),
    "preferences": (
        *("doc-preferences", "query-augment", "pre-aligned-sft", "train-reranker", "rerank"),
    ),
}
MODULES = {stage: module for module, names in STAGES.items() for stage in names}


def families(stage: str | None = None) -> list[ModuleType]:
    """Every module of this package that registers stages (has a `register`); with a
    stage that MODULES names, its module alone."""
    if stage in MODULES:
        return [importlib.import_module(f"{__name__}.{MODULES[stage]}")]
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "common")
    names = [*ORDER, *(n for n in found if n not in ORDER)]
    modules = [importlib.import_module(f"{__name__}.{name}") for name in names]
    return [m for m in modules if hasattr(m, "register")]
