"""The `pseudo_query` block: its expansion into plain nodes (two rounds with their RL),
the checks of retrieval tasks, retrievers and PPO over passages in the config graph, and
the paper-scale config's dry run."""

import copy
import json

import pytest
import yaml

from ragtrain.graph.config import ConfigError, prepare
from ragtrain.graph.dryrun import planned_jobs
from tests.conftest import ROOT, snakemake

TINY = yaml.safe_load((ROOT / "tests" / "tiny_pq.yaml").read_text())
DEMO = yaml.safe_load((ROOT / "config" / "pseudo_query.yaml").read_text())
# The rounds without their RL: each round's SFT writer starts the next.
NO_RL = {**TINY, "pseudo_query": {**TINY["pseudo_query"], "rl": False}}


def expanded(cfg=TINY):
    return prepare(copy.deepcopy(cfg))


def test_rounds_chain_through_the_query_writer_and_the_current_retriever():
    cfg = expanded(NO_RL)
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
        *(f"pq_r{r}_rl_{m}" for r in (1, 2) for m in ("all", "bm25", "bm25_dense_lossnet")),
    }  # fmt: skip
    assert {(s, k) for _, s, k in got} == {("test", 10)}


def test_the_report_pairs_each_trained_retriever_with_gold_and_each_rl_one_with_its_twin():
    pairs = [(p["a"], p["b"]) for p in expanded()["retrieval_pairs"]]
    trained = [f"pq_r{r}_{m}" for r in (1, 2) for m in ("all", "bm25", "bm25_dense_lossnet",
               "colbert", "rl_all", "rl_bm25", "rl_bm25_dense_lossnet")]  # fmt: skip
    twins = [(f"pq_r{r}_rl_{m}", f"pq_r{r}_{m}") for r in (1, 2)
             for m in ("all", "bm25", "bm25_dense_lossnet")]  # fmt: skip
    assert pairs == [*((name, "pq_gold") for name in trained), *twins]
    # RL on other filter combinations: only the retrievers with an SFT twin get one.
    cfg = block(rl={"combinations": [["bm25", "dense"]]}, rounds=1)
    pairs = [(p["a"], p["b"]) for p in expanded(cfg)["retrieval_pairs"]]
    assert ("pq_r1_rl_bm25_dense", "pq_gold") in pairs
    assert [p for p in pairs if p[1] != "pq_gold"] == [("pq_r1_rl_all", "pq_r1_all")]
    # Without RL, the gold pairs alone; the block's `evaluate` may name its own pairs.
    pairs = [(p["a"], p["b"]) for p in expanded(NO_RL)["retrieval_pairs"]]
    assert pairs and all(b == "pq_gold" for _, b in pairs)
    cfg = block(evaluate={"paired": [["pq_r1_all", "pq_bm25"]]})
    assert [(p["a"], p["b"]) for p in expanded(cfg)["retrieval_pairs"]] == [
        ("pq_r1_all", "pq_bm25")
    ]
    cfg = block(evaluate={"paired": [["pq_r1_all", "pq_qgen_r1"]]})
    with pytest.raises(ConfigError, match="'pq_qgen_r1' is not among") as err:
        expanded(cfg)
    assert err.value.key == "evaluate_retrieval[0].paired[0]"


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


# ---------------------------------------------------------------- the RL round


def test_rl_rounds_train_a_reward_model_and_a_ppo_writer_on_each_rounds_pairs():
    cfg = expanded()
    models, products = cfg["models"], cfg["products"]
    for r in (1, 2):
        rm, ppo = models[f"pq_rm_r{r}"], models[f"pq_ppo_r{r}"]
        # The reward model and the PPO writer start from the round's SFT writer.
        assert (rm["kind"], rm["init"], rm["data"]) == ("reward_model", f"pq_qgen_r{r}",
                                                        f"pq_prefs_r{r}")  # fmt: skip
        assert (ppo["kind"], ppo["init"]) == ("ppo", f"pq_qgen_r{r}")
        # PPO's prompts: the task's passages, the sample the SFT writer wrote for.
        assert (ppo["dataset"], ppo["prompt"], ppo["retrieval"]) == ("task", "doc2query", "none")
        assert ppo["docs"] == products[f"pq_queries_r{r}"]["docs"] == 6
        assert ppo["seed"] == products[f"pq_queries_r{r}"]["seed"]
        # Rewards: the reward model, and the source's rank under the round's retriever.
        assert ppo["rewards"] == [
            {"kind": "reward_model", "model": f"pq_rm_r{r}"},
            {"kind": "retrieval_rank", "retriever": f"pq_r{r}_bm25_dense_lossnet",
             "weight": 1.0},
        ]  # fmt: skip
        assert products[f"pq_prefs_r{r}"]["retriever"] == f"pq_r{r}_bm25_dense_lossnet"
        # The block's settings reach them.
        assert (ppo["iterations"], ppo["max_new_tokens"], ppo["lora"]["r"]) == (2, 6, 4)
        assert (rm["max_length"], rm["lora"]["r"]) == (256, 4)
        # The PPO writer's queries go through the same filters, LossNet with the same
        # current retriever as the SFT writer's.
        queries = products[f"pq_queries_r{r}_rl"]
        assert (queries["kind"], queries["model"]) == ("pseudo_queries", f"pq_ppo_r{r}")
        assert products[f"pq_r{r}_rl_bm25"]["from"] == f"pq_queries_r{r}_rl"
        chain = products[f"pq_r{r}_rl_bm25_dense_lossnet"]
        assert chain["from"] == f"pq_r{r}_rl_bm25_dense"
        assert chain["retriever"] == products[f"pq_r{r}_bm25_dense_lossnet"]["retriever"]
        assert models[f"pq_r{r}_rl_all"]["queries"] == [f"pq_queries_r{r}_rl"]
        assert products[f"pq_prefs_r{r}_rl"]["from"] == f"pq_r{r}_rl_bm25_dense_lossnet"
    # The next round starts from the PPO writer, on its kept queries, easy to hard; its
    # LossNet scores with the PPO writer's retriever.
    assert (models["pq_qgen_r2"]["init"], models["pq_qgen_r2"]["data"]) == (
        "pq_ppo_r1",
        "pq_sft_r2",
    )
    assert products["pq_sft_r2"]["from"] == "pq_prefs_r1_rl"
    assert products["pq_r2_bm25_dense_lossnet"]["retriever"] == "pq_r1_rl_bm25_dense_lossnet"
    # SFT and RL writers' retrievers are evaluated side by side (no ColBERT on RL queries).
    names = {e["retriever"] for e in cfg["retrieval_evaluations"]}
    rl = {f"pq_r{r}_rl_{m}" for r in (1, 2) for m in ("all", "bm25", "bm25_dense_lossnet")}
    assert rl <= names and "pq_r1_rl_colbert" not in cfg["models"]


def test_rl_settings_choose_the_rewards_and_the_filter_combinations():
    cfg = copy.deepcopy(TINY)
    cfg["pseudo_query"]["rl"] = {"retrieval_reward": None, "combinations": [["bm25"]]}
    models, products = expanded(cfg)["models"], expanded(cfg)["products"]
    assert models["pq_ppo_r1"]["rewards"] == [{"kind": "reward_model", "model": "pq_rm_r1"}]
    assert models["pq_ppo_r1"]["iterations"] == 20  # PPO's own defaults
    assert "pq_r1_rl_bm25" in models and "pq_r1_rl_bm25_dense" not in products
    assert products["pq_prefs_r1_rl"]["from"] == "pq_r1_rl_bm25"
    cfg["pseudo_query"]["rl"] = True
    assert "pq_ppo_r2" in expanded(cfg)["models"]
    for off in (False, None):
        cfg["pseudo_query"]["rl"] = off
        got = expanded(cfg)
        assert not [n for n in got["models"] if "_rm_" in n or "_ppo_" in n or "_rl_" in n]
        assert got["models"]["pq_qgen_r2"]["init"] == "pq_qgen_r1"


@pytest.mark.parametrize(
    ("rl", "key", "message"),
    [
        ({"ppo": {"iteration": 3}}, "pseudo_query.rl.ppo.iteration", "unknown key"),
        ({"ppo": {"rewards": []}}, "pseudo_query.rl.ppo.rewards", "unknown key"),
        ({"reward_model": {"data": "x"}}, "pseudo_query.rl.reward_model.data", "unknown key"),
        ({"retrieval_reward": "yes"}, "pseudo_query.rl.retrieval_reward", "a weight or null"),
        ({"combinations": [["nli"]]}, "pseudo_query.rl.combinations[0]", "unknown filter"),
        ({"ppo": {"docs": 5}}, "pseudo_query.rl.ppo.docs", "set pseudo_query.queries.docs"),
        ({"ppo": {"seed": 5}}, "pseudo_query.rl.ppo.seed", "the passages the SFT writer wrote"),
    ],
)
def test_bad_rl_block_names_the_key(rl, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        prepare(block(rl=rl))
    assert err.value.key == key


def ppo_over(dataset: str, **node) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["pseudo_query"]["rl"] = False
    cfg["worlds"]["w"]["questions"] = {"test": 4}
    cfg["datasets"]["qa"] = {"world": "w", "split": "test"}
    cfg["models"]["rm"] = {"kind": "reward_model", "init": "base", "data": "pq_prefs_r1"}
    cfg["models"]["writer"] = {"kind": "ppo", "init": "pq_qgen_r1", "dataset": dataset, **node}
    return cfg


def test_ppo_over_a_beir_task_prompts_with_its_passages():
    ranked = [{"kind": "reward_model", "model": "rm"},
              {"kind": "retrieval_rank", "retriever": "pq_gold", "depth": 10}]  # fmt: skip
    writer = prepare(ppo_over("task", rewards=ranked))["models"]["writer"]
    assert (writer["prompt"], writer["retrieval"], writer["docs"]) == ("doc2query", "none", None)
    # A QA dataset keeps its closed-book prompt.
    qa = prepare(ppo_over("qa", rewards=ranked[:1]))["models"]["writer"]
    assert qa["prompt"] == "closed_book"


@pytest.mark.parametrize(
    ("dataset", "node", "key", "message"),
    [
        ("task", {"rewards": [{"kind": "correctness"}]}, "models.writer.rewards[0].kind",
         "reads gold answers"),
        ("task", {"rewards": [{"kind": "length"}], "retrieval": "pq_bm25"},
         "models.writer.retrieval", "retrieve nothing"),
        ("qa", {"rewards": [{"kind": "retrieval_rank", "retriever": "pq_gold"}]},
         "models.writer.rewards[0].kind", "only a ppo model over a beir dataset"),
        ("task", {"rewards": [{"kind": "retrieval_rank", "retriever": "rm"}]},
         "models.writer.rewards[0].retriever", "expected a biencoder model"),
        ("task", {"rewards": [{"kind": "retrieval_rank"}]},
         "models.writer.rewards[0].retriever", "names a biencoder model"),
        ("qa", {"rewards": [{"kind": "length"}], "docs": 4}, "models.writer.docs",
         "not for QA prompts"),
    ],
)  # fmt: skip
def test_bad_passage_ppo_names_the_key(dataset, node, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        prepare(ppo_over(dataset, **node))
    assert err.value.key == key


def test_group_rl_still_takes_qa_datasets_only():
    cfg = ppo_over("task", rewards=[{"kind": "length"}])
    cfg["models"]["writer"]["kind"] = "grpo"
    with pytest.raises(ConfigError, match="expected a QA dataset") as err:
        prepare(cfg)
    assert err.value.key == "models.writer.dataset"


def test_the_paper_scale_config_plans_its_graph(tmp_path):
    """config/paper/pseudo_query.yaml dry-runs (its FiQA folder stands in as a fixture)."""
    config = yaml.safe_load((ROOT / "config/paper/pseudo_query.yaml").read_text())
    folder = tmp_path / "data/pseudo_query/fiqa"
    (folder / "qrels").mkdir(parents=True)
    passages = [{"_id": f"d{i}", "title": "", "text": f"passage {i}"} for i in range(4)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "query"}) + "\n")
    for split in ("train", "dev", "test"):
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\n")
    proc = snakemake(
        "-n", "--configfile", str(ROOT / "config/paper/pseudo_query.yaml"),
        "--directory", str(tmp_path),
    )  # fmt: skip
    jobs = planned_jobs(proc.stdout)
    # Three rounds, each: SFT writer, RM, PPO writer; two writers' queries per round.
    assert jobs["train"] == 3 and jobs["train_reward_model"] == 3 and jobs["train_rl"] == 3
    assert jobs["pseudo_queries"] == 6 and jobs["query_preferences"] == 6
    prepared = prepare(config)
    models = prepared["models"]
    # The seed's settings: LoRA on q, v; RM at 1e-8, PPO at 1e-7.
    for name in ("pq_qgen_r1", "pq_rm_r1", "pq_ppo_r1"):
        assert models[name]["lora"]["targets"] == ["q_proj", "v_proj"]
    assert models["pq_rm_r3"]["learning_rate"] == 1.0e-8
    assert models["pq_ppo_r3"]["learning_rate"] == 1.0e-7
    assert models["pq_qgen_r3"]["init"] == "pq_ppo_r2"
