"""The pseudo-query recipe end to end through Snakemake: one round with its RL on a tiny
task (SFT writer -> queries -> filters -> retrievers -> pairs -> reward model -> PPO
writer -> queries -> filters -> retrievers). The second round's wiring (the writer from
the PPO writer on the kept queries, easy to hard; LossNet with the last retriever) is
checked by the expansion tests (tests/test_pseudo_query_config.py)."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from ragtrain.graph.dryrun import planned_jobs
from tests.conftest import ROOT, e2e_cores, snakemake

TINY_PQ = yaml.safe_load((ROOT / "tests" / "tiny_pq.yaml").read_text())
# The run's combination: the filter chain alone. tiny_pq.yaml's [bm25] combination (its
# expansion is checked in tests/test_pseudo_query_config.py) would add two retrievers a
# round that learn what `all` learns: BM25 keeps every query here (see tiny_pq.yaml).
CHAIN = ["bm25", "dense", "lossnet"]
# Retrievers evaluated: the baselines, gold-only, then the SFT writer's all queries, the
# chain's kept ones and the ColBERT on those, and the PPO writer's all and kept queries.
RETRIEVERS = {
    "pq_bm25", "pq_encoder", "pq_gold",
    *(f"pq_r1_{m}" for m in ("all", "bm25_dense_lossnet", "colbert")),
    *(f"pq_r1_rl_{m}" for m in ("all", "bm25_dense_lossnet")),
}  # fmt: skip
# The branches of the round: the SFT writer's queries and filters, the PPO writer's.
BRANCHES = {"sft": ("pq_queries_r1", "pq_r1"), "rl": ("pq_queries_r1_rl", "pq_r1_rl")}


def tiny_pq_config(tmp_path: Path, tiny_model: Path) -> Path:
    cfg = copy.deepcopy(TINY_PQ)
    cfg["models"]["base"]["path"] = str(tiny_model)
    assert CHAIN in cfg["pseudo_query"]["combinations"] and cfg["pseudo_query"]["rl"]
    cfg["pseudo_query"]["combinations"] = [CHAIN]
    # One round, with its RL: the CI's budget (the tiny run's second round cost as much).
    cfg["pseudo_query"]["rounds"] = 1
    configfile = tmp_path / "tiny_pq.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    return configfile


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


@pytest.mark.e2e
@pytest.mark.slow
def test_pseudo_query_recipe_end_to_end(tiny_model, tmp_path):
    configfile = tiny_pq_config(tmp_path, tiny_model)
    # ColBERT's and the reward model's rules never start vLLM either: one core each,
    # beside the other jobs. The longest chain (the SFT writer, its queries, filters and
    # retriever, pairs, reward model, PPO writer, its queries, filters and retriever)
    # goes first; the other evaluations and the `all` retrievers fill the other core.
    cores = e2e_cores("train_colbert", "evaluate_colbert", "train_reward_model")
    last = "results/tiny_pq/eval_retrieval/pq_r1_rl_bm25_dense_lossnet/task/test/metrics.json"
    snakemake(*cores, "--prioritize", last, "--configfile", str(configfile),
              "--directory", str(tmp_path))  # fmt: skip
    results = tmp_path / "results" / "tiny_pq"
    products = results / "products"

    # The task: 8 gold train pairs, 8 test queries, qrels in BEIR's layout.
    qrels = (results / "data/task/qrels/test.tsv").read_text().splitlines()
    assert qrels[0] == "query-id\tcorpus-id\tscore" and len(qrels) == 9
    gold_sft = read_jsonl(products / "pq_gold_sft/train.jsonl")
    gold_sft += read_jsonl(products / "pq_gold_sft/dev.jsonl")
    assert len(gold_sft) == 8
    labelled = {
        line.split("\t")[1]
        for line in (results / "data/task/qrels/train.tsv").read_text().splitlines()[1:]
    }

    for branch, (queries_name, prefix) in BRANCHES.items():
        queries = read_jsonl(products / f"{queries_name}/data.jsonl")
        assert queries and {q["doc_id"] for q in queries}
        assert not {q["doc_id"] for q in queries} & labelled, (
            "pseudo-queries only for unlabelled passages"
        )
        # Filters annotate every candidate and chain: a dropped query stays dropped.
        bm25 = read_jsonl(products / f"{prefix}_bm25/data.jsonl")
        assert len(bm25) == len(queries)
        k = TINY_PQ["pseudo_query"]["filters"]["bm25"]["k"]
        assert all(
            "bm25_rank" in q["filters"] and q["kept"] == (q["filters"]["bm25_rank"] <= k)
            for q in bm25
        )
        dense = read_jsonl(products / f"{prefix}_bm25_dense/data.jsonl")
        last = read_jsonl(products / f"{prefix}_bm25_dense_lossnet/data.jsonl")
        for chain in ((bm25, dense), (dense, last)):
            for before, after in zip(*chain, strict=True):
                assert after["id"] == before["id"]
                if not before["kept"]:
                    assert not after["kept"] and "lossnet" not in after["filters"]
        # the chain drops some queries and keeps some (so there are pairs)
        assert 0 < sum(q["kept"] for q in last) < len(last), branch
        lossnet = json.loads((products / f"{prefix}_bm25_dense_lossnet/stats.json").read_text())
        assert lossnet["n_kept"] <= lossnet["n_candidates"]
        prefs_name = "pq_prefs_r1" + ("_rl" if branch == "rl" else "")
        prefs = read_jsonl(products / f"{prefs_name}/data.jsonl")
        assert all(isinstance(q["difficulty"], int) and q["difficulty"] >= 1 for q in prefs)
        pairs = read_jsonl(products / f"{prefs_name}/train.jsonl") + read_jsonl(
            products / f"{prefs_name}/dev.jsonl"
        )
        kept_texts = {q["query"] for q in prefs if q["kept"]}
        assert pairs and all(p["chosen"][0]["content"] in kept_texts for p in pairs)

    # The RL round: the reward model learnt from the SFT branch's pairs, from its writer.
    pairs = read_jsonl(products / "pq_prefs_r1/train.jsonl")
    rm = json.loads((results / "models/pq_rm_r1/metrics.json").read_text())
    assert rm["kind"] == "reward_model" and rm["n_train"] == len(pairs)
    assert rm["init"] == "pq_qgen_r1" and "dev_pair_accuracy" in rm
    # PPO of that writer over the passages the SFT writer wrote for (the dev share held
    # out), scored by the reward model and the source passage's rank.
    ppo = json.loads((results / "models/pq_ppo_r1/metrics.json").read_text())
    written_for = {q["doc_id"] for q in read_jsonl(products / "pq_queries_r1/data.jsonl")}
    assert ppo["kind"] == "ppo" and ppo["init"] == "pq_qgen_r1" and ppo["iterations"] == 2
    assert ppo["n_train"] + ppo["n_dev"] == TINY_PQ["pseudo_query"]["queries"]["docs"]
    assert len(written_for) <= TINY_PQ["pseudo_query"]["queries"]["docs"]
    history = json.loads((results / "models/pq_ppo_r1/trainer_state.json").read_text())
    steps = [h for h in history["log_history"] if "reward" in h]
    assert len(steps) == 2
    for h in steps:
        assert {"reward/reward_model", "reward/retrieval_rank"} <= set(h)
        assert 0 <= h["reward/retrieval_rank"] <= 1
    # The PPO writer is a whole model that the queries product loaded.
    assert (results / "models/pq_ppo_r1/config.json").is_file()
    rl_queries = json.loads((products / "pq_queries_r1_rl/stats.json").read_text())
    assert rl_queries["n_queries"] >= 1

    # Every retriever scored; trained ones say what they learnt from.
    rows = {}
    for metrics in (results / "eval_retrieval").glob("*/task/test/metrics.json"):
        m = json.loads(metrics.read_text())
        rows[m["retriever"]] = m
        assert m["n"] == 8 and 0 <= m["ndcg@10"] <= 1 and m["recall@100"] >= m["mrr@10"] - 1e-9
    assert set(rows) == RETRIEVERS
    assert rows["pq_r1_colbert"]["kind"] == "colbert"
    gold = json.loads((results / "models/pq_gold/metrics.json").read_text())
    assert gold["n_pseudo"] == 0 and gold["n_gold"] == 8
    for queries_name, prefix in BRANCHES.values():
        everything = json.loads((results / f"models/{prefix}_all/metrics.json").read_text())
        n = len(read_jsonl(products / f"{queries_name}/data.jsonl"))
        assert everything["n_pseudo"] == n

    summary = (results / "report/summary.md").read_text()
    assert "## Retrievers" in summary and "| pq_r1_rl_bm25_dense_lossnet | biencoder |" in summary
    assert "lossnet filter" in summary and "pseudo-queries for" in summary
    assert (results / "report/metrics.png").stat().st_size > 1000
    assert not any((results / "work").glob("*/*"))

    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # A new retrieval-reward weight reruns the PPO writer and what follows it: its
    # queries, their filters, retrievers, pairs and scores; nothing of the SFT branch.
    cfg = yaml.safe_load(configfile.read_text())
    cfg["pseudo_query"]["rl"]["retrieval_reward"] = 0.5
    configfile.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    jobs = planned_jobs(proc.stdout)
    assert jobs["train_rl"] == 1 and jobs["pseudo_queries"] == 1, jobs
    assert jobs["query_filter"] == 3 and jobs["train_biencoder"] == 2, jobs
    assert jobs["query_preferences"] == 1, jobs
    assert "train_reward_model" not in jobs and "train" not in jobs, jobs
