"""The DPA-RAG recipe (config/dpa.yaml's graph) end to end through Snakemake on the tiny
model: query augmentation with the NLI filter, document labels, two rerankers (three
losses with MGDA, classification alone), reranked retrieval, pre-aligned SFT then SFT on
the reranked documents, evaluated and reported. It starts from tests/tiny.yaml's
upstream (world, BM25, datasets, base model), built once for the tests. The paper-scale
config is checked by a dry run."""

import json
from pathlib import Path

import pytest
import yaml

from ragtrain.core.records import read_jsonl
from ragtrain.data.preferences import load_pairs
from ragtrain.graph.config import prepare
from ragtrain.graph.dryrun import planned_jobs
from tests.conftest import (
    ROOT,
    assert_shares_tiny_upstream,
    assert_upstream_up_to_date,
    e2e_cores,
    snakemake,
    tiny_config,
)


def test_the_recipe_shares_tiny_yaml_upstream():
    assert_shares_tiny_upstream(tiny_config("tiny_dpa.yaml", Path("/tiny-model")))


@pytest.mark.slow
@pytest.mark.e2e
def test_dpa_recipe_end_to_end(from_tiny_upstream, tiny_model):
    tmp_path = from_tiny_upstream
    configfile = tmp_path / "tiny_dpa.yaml"
    configfile.write_text(yaml.safe_dump(tiny_config("tiny_dpa.yaml", tiny_model)))
    shared = ("results/tiny/models/base", "results/tiny/data/train/examples.jsonl")
    assert_upstream_up_to_date(tmp_path, configfile, shared)
    cores = e2e_cores("evaluate", "doc_preferences", "query_augment", "train_reranker", "rerank")
    snakemake(*cores, "--configfile", str(configfile), "--directory", str(tmp_path))
    results = tmp_path / "results" / "tiny"
    products = results / "products"

    # Augmentation: two rewrites per question, the rephrasings NLI-checked, the SPARQL
    # rewrites not; the dataset made from it holds the originals and the kept rewrites.
    train = read_jsonl(results / "data/train/examples.jsonl")
    aug_stats = json.loads((products / "augmented/stats.json").read_text())
    by_strategy = aug_stats["by_strategy"]
    assert by_strategy["rephrase"]["nli_checked"] and not by_strategy["sparql"]["nli_checked"]
    assert by_strategy["sparql"]["dropped_nli"] == 0
    kept = sum(s["kept"] for s in by_strategy.values())
    assert aug_stats["nli_pairs"] > 0
    train_aug = read_jsonl(results / "data/train_aug/examples.jsonl")
    assert len(train_aug) == len(train) + kept
    originals = {ex["id"] for ex in train}
    for ex in train_aug:
        if ex["id"] not in originals:
            assert ex["meta"]["augmented_from"] in originals

    # Labels: every question of train_aug, each of its two BM25 documents labelled; the
    # reranker records read back with the DPA-RAG loader, split as their questions.
    labels = read_jsonl(products / "labels/labels.jsonl")
    assert sorted(r["id"] for r in labels) == sorted(ex["id"] for ex in train_aug)
    assert all(len(r["docs"]) == 2 for r in labels)
    split = {r["id"]: r["split"] for r in labels}
    for ex in train_aug:
        origin = (ex.get("meta") or {}).get("augmented_from", ex["id"])
        assert split[ex["id"]] == split[origin]
    label_stats = json.loads((products / "labels/stats.json").read_text())
    assert sum(label_stats["labels"].values()) == 2 * len(train_aug)
    records = load_pairs(products / "labels/train.jsonl", "dpa_rag")
    assert records and all(split[r["id"]] == "train" for r in records)

    # Rerankers: the MGDA one logged three weights per step, summing to 1; the other
    # trained on classification alone.
    steps = read_jsonl(results / "models/reranker_mgda/weights.jsonl")
    assert steps and all(abs(sum(s["weights"].values()) - 1) < 1e-4 for s in steps)
    assert (results / "models/reranker_mgda/weights.png").stat().st_size > 0
    cls = json.loads((results / "models/reranker_cls/metrics.json").read_text())
    assert cls["losses"] == ["classification"] and "f1" in cls["dev"]

    # Reranked retrieval: two of BM25's top 6, beside BM25's own top 2.
    stats = json.loads((results / "retrieval/rerank_mgda/test/stats.json").read_text())
    assert stats["kind"] == "rerank" and stats["candidates"] == 6 and stats["k"] == 2
    assert "first_stage_answer_recall@2" in stats
    reranked = read_jsonl(results / "retrieval/rerank_mgda/train/examples.jsonl")
    assert all(len(ex["docs"]) == 2 and ex["docs"][0]["first_stage_rank"] <= 6 for ex in reranked)

    # The LLM chain: pre-aligned SFT, then SFT on the reranked documents' gold answers.
    pre = read_jsonl(products / "pre_aligned_data/train.jsonl")
    assert all(r["completion"][0]["content"].startswith("Helpful documents:") for r in pre)
    sft = read_jsonl(products / "sft_reranked/train.jsonl")
    assert all(r["completion"][0]["content"] in train_answers(train) for r in sft)
    dpa = json.loads((results / "models/dpa/metrics.json").read_text())
    assert dpa["init"] == "pre_aligned"
    metrics = json.loads((results / "eval/dpa/test/rerank_mgda/metrics.json").read_text())
    assert "hits@1" in metrics and metrics["n"] == 8

    summary = (results / "report/summary.md").read_text()
    assert "## Reranking" in summary and "## Rerankers" in summary
    assert "| rerank_cls | reranker_cls | test | bm25 | 2 |" in summary


def train_answers(examples: list[dict]) -> set[str]:
    return {ex["answers"][0] for ex in examples if ex["answers"]}


def test_the_paper_scale_config_plans_its_graph(tmp_path):
    """config/paper/dpa.yaml dry-runs (its data files stand in as small fixtures)."""
    config = yaml.safe_load((ROOT / "config/paper/dpa.yaml").read_text())
    data = tmp_path / "data" / "dpa"
    data.mkdir(parents=True)
    question = {"question": "who founded kesh", "answer": ["Mira Okafor"]}
    for name in ("nq_train.jsonl", "nq_test.jsonl"):
        (data / name).write_text(json.dumps(question) + "\n")
    passage = {"id": "1", "contents": '"Kesh"\nKesh was founded by Mira Okafor.'}
    (data / "psgs_w100.jsonl").write_text(json.dumps(passage) + "\n")
    proc = snakemake(
        "-n", "--configfile", str(ROOT / "config/paper/dpa.yaml"), "--directory", str(tmp_path)
    )  # fmt: skip
    jobs = planned_jobs(proc.stdout)
    assert jobs["query_augment"] == 1 and jobs["doc_preferences"] == 1
    assert jobs["train_reranker"] == 4 and jobs["train"] == 3 and jobs["evaluate"] == 3
    prepared = prepare(config)
    dpa = prepared["models"]["dpa"]
    assert (dpa["learning_rate"], dpa["epochs"], dpa["max_length"]) == (7.0e-6, 3, 8192)
    assert dpa["finetune"] == "full" and dpa["deepspeed"] == "zero3"
    assert prepared["models"]["reranker_dpa"]["losses"] == [
        "classification", "ranking", "contrastive"
    ]  # fmt: skip
    assert prepared["models"]["reranker_dpa"]["weighting"] == "mgda"
