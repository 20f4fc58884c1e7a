"""The pseudo-query recipe end to end through Snakemake: two rounds on a tiny task."""

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
# Retrievers evaluated: the baselines, gold-only, then per round all queries, the chain's
# kept ones, and the ColBERT on those.
RETRIEVERS = {
    "pq_bm25", "pq_encoder", "pq_gold",
    *(f"pq_r{r}_{m}" for r in (1, 2) for m in ("all", "bm25_dense_lossnet", "colbert")),
}  # fmt: skip


def tiny_pq_config(tmp_path: Path, tiny_model: Path) -> Path:
    cfg = copy.deepcopy(TINY_PQ)
    cfg["models"]["base"]["path"] = str(tiny_model)
    assert CHAIN in cfg["pseudo_query"]["combinations"]
    cfg["pseudo_query"]["combinations"] = [CHAIN]
    configfile = tmp_path / "tiny_pq.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    return configfile


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


@pytest.mark.e2e
@pytest.mark.slow
def test_pseudo_query_recipe_end_to_end(tiny_model, tmp_path):
    configfile = tiny_pq_config(tmp_path, tiny_model)
    # ColBERT's rules never start vLLM either: one core each, beside the other jobs. The
    # longest chains (both rounds' writer, queries, filters and retrievers, to round 2's
    # pairs and ColBERT score) go first; the other evaluations and the `all` retrievers
    # fill the other core.
    cores = e2e_cores("train_colbert", "evaluate_colbert")
    last = ("results/tiny_pq/products/pq_prefs_r2/stats.json",
            "results/tiny_pq/eval_retrieval/pq_r2_colbert/task/test/metrics.json")  # fmt: skip
    snakemake(*cores, "--prioritize", *last, "--configfile", str(configfile),
              "--directory", str(tmp_path))  # fmt: skip
    results = tmp_path / "results" / "tiny_pq"
    products = results / "products"

    # The task: 8 gold train pairs, 8 test queries, qrels in BEIR's layout.
    qrels = (results / "data/task/qrels/test.tsv").read_text().splitlines()
    assert qrels[0] == "query-id\tcorpus-id\tscore" and len(qrels) == 9
    gold_sft = read_jsonl(products / "pq_gold_sft/train.jsonl")
    gold_sft += read_jsonl(products / "pq_gold_sft/dev.jsonl")
    assert len(gold_sft) == 8

    for r in (1, 2):
        queries = read_jsonl(products / f"pq_queries_r{r}/data.jsonl")
        assert queries and {q["doc_id"] for q in queries}
        labelled = {
            line.split("\t")[1]
            for line in (results / "data/task/qrels/train.tsv").read_text().splitlines()[1:]
        }
        assert not {q["doc_id"] for q in queries} & labelled, (
            "pseudo-queries only for unlabelled passages"
        )
        # Filters annotate every candidate and chain: a dropped query stays dropped.
        bm25 = read_jsonl(products / f"pq_r{r}_bm25/data.jsonl")
        assert len(bm25) == len(queries)
        k = TINY_PQ["pseudo_query"]["filters"]["bm25"]["k"]
        assert all(
            "bm25_rank" in q["filters"] and q["kept"] == (q["filters"]["bm25_rank"] <= k)
            for q in bm25
        )
        dense = read_jsonl(products / f"pq_r{r}_bm25_dense/data.jsonl")
        last = read_jsonl(products / f"pq_r{r}_bm25_dense_lossnet/data.jsonl")
        for chain in ((bm25, dense), (dense, last)):
            for before, after in zip(*chain, strict=True):
                assert after["id"] == before["id"]
                if not before["kept"]:
                    assert not after["kept"] and "lossnet" not in after["filters"]
        # the chain drops some queries and keeps some (so round 2 has data)
        assert 0 < sum(q["kept"] for q in last) < len(last)
        lossnet = json.loads((products / f"pq_r{r}_bm25_dense_lossnet/stats.json").read_text())
        assert lossnet["n_kept"] <= lossnet["n_candidates"]
        prefs = read_jsonl(products / f"pq_prefs_r{r}/data.jsonl")
        assert all(isinstance(q["difficulty"], int) and q["difficulty"] >= 1 for q in prefs)
        pairs = read_jsonl(products / f"pq_prefs_r{r}/train.jsonl") + read_jsonl(
            products / f"pq_prefs_r{r}/dev.jsonl"
        )
        kept_texts = {q["query"] for q in prefs if q["kept"]}
        assert pairs and all(p["chosen"][0]["content"] in kept_texts for p in pairs)

    # Round 2's writer learnt from round 1's kept queries, in their easy-to-hard order.
    sft_r2 = read_jsonl(products / "pq_sft_r2/train.jsonl")
    kept_r1 = [q["id"] for q in read_jsonl(products / "pq_prefs_r1/data.jsonl") if q["kept"]]
    assert [s["id"] for s in sft_r2] == [i for i in kept_r1 if i in {s["id"] for s in sft_r2}]
    state = json.loads((results / "models/pq_qgen_r2/trainer_state.json").read_text())
    assert state["global_step"] >= 1

    # Every retriever scored; trained ones say what they learnt from.
    rows = {}
    for metrics in (results / "eval_retrieval").glob("*/task/test/metrics.json"):
        m = json.loads(metrics.read_text())
        rows[m["retriever"]] = m
        assert m["n"] == 8 and 0 <= m["ndcg@10"] <= 1 and m["recall@100"] >= m["mrr@10"] - 1e-9
    assert set(rows) == RETRIEVERS
    assert rows["pq_r1_colbert"]["kind"] == "colbert"
    gold = json.loads((results / "models/pq_gold/metrics.json").read_text())
    everything = json.loads((results / "models/pq_r1_all/metrics.json").read_text())
    assert gold["n_pseudo"] == 0 and gold["n_gold"] == 8
    assert everything["n_pseudo"] == len(read_jsonl(products / "pq_queries_r1/data.jsonl"))

    summary = (results / "report/summary.md").read_text()
    assert "## Retrievers" in summary and "| pq_r2_bm25_dense_lossnet | biencoder |" in summary
    assert "lossnet filter" in summary and "pseudo-queries for" in summary
    assert (results / "report/metrics.png").stat().st_size > 1000
    assert not any((results / "work").glob("*/*"))

    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # A new LossNet share reruns round 1's LossNet filter and what follows it: round 1's
    # retriever and pairs, then all of round 2 from its writer on; nothing before.
    cfg = yaml.safe_load(configfile.read_text())
    cfg["pseudo_query"]["filters"]["lossnet"]["top_fraction"] = 0.8
    configfile.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    jobs = planned_jobs(proc.stdout)
    assert jobs["query_filter"] == 1 + 3, jobs
    assert jobs["pseudo_queries"] == 1 and jobs["train"] == 1, jobs  # round 2's writer
    assert "task" not in jobs and "query_sft_data" in jobs
