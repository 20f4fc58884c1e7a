"""The self-demos recipe (config/self_demos.yaml's graph) end to end through Snakemake on
the tiny model: prompt searches, the paper's nine strategies, the tournament, RA-IT and
self-demo SFT, DPO on winners vs losers, judged evaluations and the report. It starts
from tests/tiny.yaml's upstream (world, retrieval, base model), built once for the tests.
The paper-scale config is checked by a dry run."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ragtrain.core.records import read_jsonl
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
    assert_shares_tiny_upstream(tiny_config("tiny_sd.yaml", Path("/tiny-model")))


@pytest.mark.slow
@pytest.mark.e2e
def test_self_demos_recipe_end_to_end(from_tiny_upstream, tiny_model):
    tmp_path = from_tiny_upstream
    configfile = tmp_path / "tiny_sd.yaml"
    configfile.write_text(yaml.safe_dump(tiny_config("tiny_sd.yaml", tiny_model)))
    # The upstream it shares: the base model and both splits retrieved.
    shared = ("results/tiny/models/base", "results/tiny/retrieval/bm25/train/examples.jsonl",
              "results/tiny/retrieval/bm25/test/stats.json")  # fmt: skip
    assert_upstream_up_to_date(tmp_path, configfile, shared)
    # Its evaluations and their judge run on the HF backend too: one core each.
    cores = e2e_cores("evaluate", "judge_evaluation")
    snakemake(*cores, "--configfile", str(configfile), "--directory", str(tmp_path))
    results = tmp_path / "results" / "tiny"
    products = results / "products"

    # Prompt searches: every prompt scored, best first by the held-out score.
    for name in ("ps_rag", "ps_no_rag"):
        prompts = read_jsonl(products / name / "data.jsonl")
        stats = json.loads((products / name / "stats.json").read_text())
        assert [p["rank"] for p in prompts] == list(range(1, len(prompts) + 1))
        assert [p["step"] for p in prompts].count(0) == 1 and stats["steps_run"] == 2
        assert 1 < len(prompts) <= 4  # the seed, then up to 3 rewrites (beam 1)
        held = [p["holdout_score"] for p in prompts]
        assert held == sorted(held, reverse=True)
    rag_prompts = [p["prompt"] for p in read_jsonl(products / "ps_rag/data.jsonl")]

    # Nine candidates per question: six from the searches' prompts, three refusal-minded,
    # each the answer to the follow-up turn.
    demos = read_jsonl(products / "sd_demos/data.jsonl")
    assert len(demos) == 12
    for record in demos:
        strategies = [s["strategy"] for s in record["samples"]]
        assert len(strategies) == 9 and strategies.count("refuse") == 3
        assert all("first_turn" in s for s in record["samples"])
    sampled = json.loads((products / "sd_demos/stats.json").read_text())
    assert sampled["strategies"]["rag_1"] == 1 and len(rag_prompts) >= 1

    # The tournament: 3 + 1 brackets per question; its stats say how the judge fared.
    cup = json.loads((products / "sd_cup/stats.json").read_text())
    assert cup["n_questions"] == 12 and cup["candidates_per_question"]["max"] == 9
    assert cup["brackets"]["n"] == 4 * cup["n_resolved"]
    assert sum(s["wins"] for s in cup["win_share"].values()) == cup["n_resolved"]
    results_ = {r["id"]: r for r in read_jsonl(products / "sd_cup/data.jsonl")}
    by_id = {r["id"]: r for r in demos}
    for qid, r in results_.items():
        assert r["winner"]["text"] in {s["text"].strip() for s in by_id[qid]["samples"]}
        assert len(r["losers"]) == 8

    # Self-demo SFT on the winners; RA-IT on the gold answers of the same questions, with
    # the same prompts and the same held-out questions.
    def split(name):
        return {
            part: {r["id"]: r for r in read_jsonl(products / name / f"{part}.jsonl")}
            for part in ("train", "dev")
        }

    sd, ra_it = split("sd_sft_data"), split("ra_it_data")
    for part in ("train", "dev"):
        assert sd[part].keys() == ra_it[part].keys()
        for qid, record in sd[part].items():
            assert record["completion"][0]["content"] == results_[qid]["winner"]["text"]
            assert ra_it[part][qid]["prompt"] == record["prompt"]
            gold = results_[qid]["answers"][0] if results_[qid]["answers"] else "I don't know."
            assert ra_it[part][qid]["completion"][0]["content"] == gold
    pairs = read_jsonl(products / "sd_pairs/train.jsonl")
    assert pairs and all(
        p["chosen"][0]["content"] == results_[p["example_id"]]["winner"]["text"] for p in pairs
    )

    # DPO with the paper's settings: a step budget and a cosine to the final rate.
    dpo = json.loads((results / "models/sd_dpo/metrics.json").read_text())
    assert dpo["kind"] == "dpo" and dpo["steps"] == 2

    # Evaluated at temperature 0.5 by the rules and by the LLM judge.
    for model in ("ra_it", "sd_dpo"):
        run = results / "eval" / model / "test/bm25"
        assert json.loads((run / "metrics.json").read_text())["n"] == 8
        judged = json.loads((run / "judged/metrics.json").read_text())
        assert judged["judges"]["label"] == "label" and "false_refusal" in judged
    summary = (results / "report/summary.md").read_text()
    assert "## Tournaments" in summary and "| sd_cup | refuse |" in summary
    assert "system prompts over 2 steps" in summary
    assert "| test | bm25 | ra_it | sd_dpo |" in summary
    assert not any((results / "work").glob("products/*/*"))


def test_the_paper_scale_config_plans_its_graph(tmp_path):
    """config/paper/self_demos.yaml dry-runs (its RA-DIT files stand in as fixtures)."""
    config = yaml.safe_load((ROOT / "config/paper/self_demos.yaml").read_text())
    fixture = ROOT / "tests/fixtures/formats/qa_radit_tasks.jsonl"
    for node in config["datasets"].values():
        (tmp_path / node["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fixture, tmp_path / node["path"])
    proc = snakemake(
        "-n", "--configfile", str(ROOT / "config/paper/self_demos.yaml"),
        "--directory", str(tmp_path),
    )  # fmt: skip
    jobs = planned_jobs(proc.stdout)
    assert jobs["prompt_search"] == 2 and jobs["self_demos"] == 1 and jobs["tournament"] == 1
    assert jobs["train"] == 3 and jobs["evaluate"] == 12 and jobs["judge_evaluation"] == 12
    prepared = prepare(config)
    dpo = prepared["models"]["sd_dpo"]
    assert (dpo["learning_rate"], dpo["min_learning_rate"], dpo["max_steps"]) == (
        5.5e-6, 1.1e-6, 800,
    )  # fmt: skip
    assert dpo["beta"] == 0.1 and dpo["rpo_alpha"] is None
    assert prepared["evaluations"][0]["generation"]["temperature"] == 0.5
