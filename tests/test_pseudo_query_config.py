"""The `pseudo_query` block: its expansion into plain nodes, and the checks of retrieval
tasks and retrievers in the config graph."""

import copy

import pytest
import yaml

from ragtrain.graph.config import ConfigError, prepare
from tests.conftest import ROOT

TINY = yaml.safe_load((ROOT / "tests" / "tiny_pq.yaml").read_text())
DEMO = yaml.safe_load((ROOT / "config" / "pseudo_query.yaml").read_text())


def expanded(cfg=TINY):
    return prepare(copy.deepcopy(cfg))


def test_rounds_chain_through_the_query_writer_and_the_current_retriever():
    cfg = expanded()
    models, products = cfg["models"], cfg["products"]
    assert (models["pq_qgen_r1"]["init"], models["pq_qgen_r1"]["data"]) == ("base", "pq_gold_sft")
    assert models["pq_qgen_r1"]["sampling"] == "random"
    # Round 2 fine-tunes round 1's writer on round 1's kept queries, easy to hard.
    assert (models["pq_qgen_r2"]["init"], models["pq_qgen_r2"]["data"]) == (
        "pq_qgen_r1",
        "pq_sft_r2",
    )
    assert models["pq_qgen_r2"]["sampling"] == "sequential"
    assert products["pq_sft_r2"]["from"] == "pq_prefs_r1"
    # Filters chain; shared prefixes are made once.
    chain = products["pq_r1_bm25_dense_lossnet"]
    assert chain["from"] == "pq_r1_bm25_dense"
    assert products["pq_r1_bm25_dense"]["from"] == "pq_r1_bm25"
    assert products["pq_r1_bm25"]["from"] == "pq_queries_r1"
    # LossNet scores with the current retriever: gold-only first, then last round's.
    assert chain["retriever"] == "pq_gold"
    assert products["pq_r2_bm25_dense_lossnet"]["retriever"] == "pq_r1_bm25_dense_lossnet"
    # Query products know their task; filters get their filter's defaults.
    assert chain["dataset"] == "task" and chain["scale"] == 20.0
    assert products["pq_r1_bm25"]["k1"] == 1.5 and products["pq_r1_bm25"]["pool_size"] == 10
    assert models["pq_r1_all"]["queries"] == ["pq_queries_r1"]
    assert models["pq_r2_colbert"]["queries"] == ["pq_r2_bm25_dense_lossnet"]
    assert models["pq_r2_colbert"]["candidates"] == "pq_bm25"


def test_every_retriever_is_evaluated_once():
    cfg = expanded()
    got = [(e["retriever"], e["split"], e["k"]) for e in cfg["retrieval_evaluations"]]
    names = [g[0] for g in got]
    assert len(names) == len(set(names))
    assert set(names) == {
        "pq_bm25", "pq_encoder", "pq_gold",
        *(f"pq_r{r}_{m}" for r in (1, 2) for m in ("all", "bm25", "bm25_dense_lossnet", "colbert")),
    }  # fmt: skip
    assert {(s, k) for _, s, k in got} == {("test", 10)}


def test_the_demo_config_expands():
    cfg = expanded(DEMO)
    assert cfg["generation"]["backend"] == "vllm"
    assert "pq_r1_bm25_dense" in cfg["models"] and "pq_r1_colbert" in cfg["models"]


def block(**changes):
    cfg = copy.deepcopy(TINY)
    cfg["pseudo_query"].update(changes)
    return cfg


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        (
            {"combinations": [["bm25", "nli"]]},
            "pseudo_query.combinations[0]",
            "unknown filter 'nli'",
        ),
        ({"retriever": {"epoch": 1}}, "pseudo_query.retriever.epoch", "unknown key"),
        ({"filters": {"bm25": {"filter": "sparse"}}}, "pseudo_query.filters.bm25.filter", "sparse"),
        ({"dataset": "nope"}, "pseudo_query.dataset", "not a BEIR dataset"),
        ({"queries": {"docs": 3, "n": 2}}, "pseudo_query.queries.n", "unknown key"),
    ],
)
def test_bad_block_names_the_key(changes, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        prepare(block(**changes))
    assert err.value.key == key


def test_a_generated_name_may_not_clash_with_a_users_node():
    cfg = copy.deepcopy(TINY)
    cfg["models"]["pq_gold"] = {"kind": "biencoder", "dataset": "task"}
    with pytest.raises(ConfigError, match="pseudo_query block makes a node of this name"):
        prepare(cfg)


def test_task_and_retriever_checks():
    cfg = copy.deepcopy(TINY)
    cfg["datasets"]["qa"] = {"world": "w", "split": "test"}
    cfg["models"]["r"] = {"kind": "biencoder", "dataset": "qa"}
    with pytest.raises(ConfigError, match="expected a BEIR") as err:
        prepare(cfg)
    assert err.value.key == "models.r.dataset"

    cfg = copy.deepcopy(TINY)
    cfg["models"]["r"] = {"kind": "biencoder", "dataset": "task", "queries": ["pq_gold_sft"]}
    with pytest.raises(ConfigError, match="query_filter or query_preferences product"):
        prepare(cfg)

    cfg = copy.deepcopy(TINY)
    cfg["models"]["cb"] = {"kind": "colbert", "dataset": "task", "candidates": "qgen"}
    with pytest.raises(ConfigError, match="expected a retriever or a biencoder model"):
        prepare(cfg)

    cfg = copy.deepcopy(TINY)
    cfg["corpora"]["other"] = {"path": "x.jsonl"}
    cfg["datasets"]["task"]["corpus"] = "other"
    with pytest.raises(ConfigError, match="needs that world's corpus"):
        prepare(cfg)


def test_retrieval_evaluation_names_must_exist():
    cfg = copy.deepcopy(TINY)
    cfg["evaluate_retrieval"] = [{"dataset": "task", "retrievers": ["bm99"]}]
    with pytest.raises(ConfigError, match="unknown retriever 'bm99'"):
        prepare(cfg)


def test_retrieval_evaluations_rank_with_retrievers_of_the_tasks_corpus():
    cfg = copy.deepcopy(TINY)
    cfg["evaluate_retrieval"] = [{"dataset": "task", "retrievers": ["pq_qgen_r1"]}]
    with pytest.raises(ConfigError, match="'pq_qgen_r1' is a sft model, not a retriever"):
        prepare(cfg)
    cfg = copy.deepcopy(TINY)
    cfg["corpora"]["other"] = {"path": "x.jsonl"}
    cfg["retrievers"] = {"bm": {"kind": "bm25", "corpus": "other"}}
    cfg["evaluate_retrieval"] = [{"dataset": "task", "retrievers": ["bm"]}]
    with pytest.raises(ConfigError, match="indexes corpus 'other'"):
        prepare(cfg)
    cfg = copy.deepcopy(TINY)
    cfg["evaluate"] = [{"models": ["base"], "datasets": ["task"], "retrieval": ["none"]}]
    with pytest.raises(ConfigError, match="expected a QA dataset") as err:
        prepare(cfg)
    assert err.value.key == "evaluate[0].datasets"
