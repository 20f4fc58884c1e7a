"""Config of the seed-faithful retrieval options: the dense filter's trained retriever,
LossNet's and ColBERT's variants, and retrieval metrics at cutoffs."""

import copy

import pytest

from ragtrain.graph.config import ConfigError, check_config, prepare
from ragtrain.graph.kinds import KINDS

BASE = {
    "run": "seed_opts",
    "worlds": {"w": {"people": 4, "organisations": 2, "places": 2, "questions": {}}},
    "corpora": {"c": {"world": "w"}},
    "datasets": {"task": {"kind": "beir", "world": "w", "corpus": "c"}},
    "models": {
        "base": {"path": "/models/base"},
        "gold": {"kind": "biencoder", "dataset": "task"},
        "cb": {"kind": "colbert", "dataset": "task", "candidates": "bm"},
    },
    "retrievers": {"bm": {"kind": "bm25", "corpus": "c"}},
    "products": {
        "q": {"kind": "pseudo_queries", "model": "base", "dataset": "task"},
        "f": {
            "kind": "query_filter",
            "filter": "dense",
            "from": "q",
            "retriever": "gold",
            "rule": "pool_top1",
            "k": 1,
            "pool_size": 30,
        },
        "l": {"kind": "query_filter", "filter": "lossnet", "from": "f", "variant": "seed"},
    },
    "evaluate_retrieval": [{"dataset": "task", "retrievers": ["bm", "gold"]}],
}


def checked(cfg: dict) -> dict:
    """What the workflow does to a config: the checks before the graph, then the graph."""
    check_config(cfg)
    return prepare(cfg)


def config(**changes):
    cfg = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, key = path.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[key] = value
    return cfg


def test_the_seed_options_are_accepted_with_their_defaults():
    cfg = checked(config())
    dense = cfg["products"]["f"]
    assert (dense["retriever"], dense["rule"], dense["encoder"]) == (
        "gold", "pool_top1", "all-MiniLM-L6-v2",
    )  # fmt: skip
    assert cfg["products"]["l"]["variant"] == "seed"
    assert cfg["models"]["cb"]["similarity"] == "cosine"
    assert (cfg["models"]["cb"]["negatives"], cfg["models"]["cb"]["embedding_size"]) == (
        "hard", 128,
    )  # fmt: skip
    # The dense filter's retriever is a ref: the DAG makes the model before the filter.
    assert KINDS[("products", "query_filter.dense")].refs["retriever"] == (
        "models", ("biencoder",),
    )  # fmt: skip
    assert [e["cutoffs"] for e in cfg["retrieval_evaluations"]] == [[1, 3, 5, 10, 100]] * 2


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"products__f__retriever": "cb"}, "products.f.retriever", "biencoder"),
        ({"products__f__retriever": "nope"}, "products.f.retriever", "nope"),
        ({"products__l__variant": "paper"}, "products.l.variant", "paper"),
        ({"models__cb__similarity": "dot"}, "models.cb.similarity", "dot"),
        ({"models__cb__negatives": "bm25"}, "models.cb.negatives", "bm25"),
        ({"models__cb__embedding_size": 0}, "models.cb.embedding_size", "0"),
    ],
)
def test_bad_values_name_the_key(changes, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        checked(config(**changes))
    assert err.value.key == key


def test_cutoffs_default_to_the_runs_depth_and_may_not_pass_it():
    entry = {"dataset": "task", "retrievers": ["bm"], "k": 10}
    cfg = checked(config(evaluate_retrieval=[entry]))
    assert cfg["retrieval_evaluations"][0]["cutoffs"] == [1, 3, 5, 10]
    cfg = checked(config(evaluate_retrieval=[{**entry, "cutoffs": [5, 2]}]))
    assert cfg["retrieval_evaluations"][0]["cutoffs"] == [2, 5]
    with pytest.raises(ConfigError, match=r"\[20\] beyond k \(10\)") as err:
        checked(config(evaluate_retrieval=[{**entry, "cutoffs": [1, 20]}]))
    assert err.value.key == "evaluate_retrieval[0].cutoffs"
    with pytest.raises(ConfigError) as err:
        checked(config(evaluate_retrieval=[{**entry, "cutoffs": [0]}]))
    assert "cutoffs" in err.value.key


def test_paired_retrievers_become_the_reports_pairs_and_must_be_in_the_entry():
    entry = {"dataset": "task", "retrievers": ["bm", "gold", "cb"], "paired": [["gold", "bm"]]}
    cfg = checked(config(evaluate_retrieval=[entry]))
    assert cfg["retrieval_pairs"] == [{"key": "evaluate_retrieval[0].paired[0]",
                                       "dataset": "task", "split": "test", "a": "gold",
                                       "b": "bm"}]  # fmt: skip
    # The evaluations themselves do not carry the pairs (a new pair reruns no evaluation).
    assert all("paired" not in e for e in cfg["retrieval_evaluations"])
    assert checked(config())["retrieval_pairs"] == []
    for pairs, message in (
        ([["gold", "bm"], ["cb", "nope"]], "'nope' is not among the entry's retrievers"),
        ([["gold", "bm"], ["gold", "gold"]], "compares 'gold' with itself"),
        ([["gold", "bm"], ["bm", "gold"]], r"again \(already paired\[0\]\)"),
    ):
        with pytest.raises(ConfigError, match=message) as err:
            checked(config(evaluate_retrieval=[{**entry, "paired": pairs}]))
        assert err.value.key == "evaluate_retrieval[0].paired[1]"
    # A retriever of the config, but evaluated in another entry only.
    other = {"dataset": "task", "retrievers": ["cb"]}
    with pytest.raises(ConfigError, match="'cb' is not among") as err:
        checked(config(evaluate_retrieval=[other, {**entry, "retrievers": ["bm", "gold"],
                                                   "paired": [["cb", "bm"]]}]))  # fmt: skip
    assert err.value.key == "evaluate_retrieval[1].paired[0]"
    with pytest.raises(ConfigError) as err:
        checked(config(evaluate_retrieval=[{**entry, "paired": [["gold"]]}]))
    assert "paired" in err.value.key
