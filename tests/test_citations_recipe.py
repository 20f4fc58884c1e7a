"""The citations recipe (config/citations.yaml's graph) end to end through Snakemake on the
tiny model: distillation SFT on the world's cited teacher answers, fine-grained (segment
beam) and holistic (best-of-n) rejection sampling with SFT on each, fine-grained and
holistic PPO and RS-then-PPO; the distilled and a PPO model evaluated with the ALCE
metrics (the tiny model as its own NLI judge) and compared in the report. It starts from
tests/tiny.yaml's upstream (world, base model), built once for the tests. The paper-scale
config is checked by a dry run."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ragtrain.core.records import read_jsonl
from ragtrain.data.citations import alce_kind
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

CITE_SHARED = {"worlds": ["world"], "models": ["base"]}
# The models evaluated (tiny_cite.yaml): an SFT one and a PPO one.
EVALUATED = ("distilled", "ppo_fg")


def test_the_recipe_shares_tiny_yaml_upstream():
    assert_shares_tiny_upstream(tiny_config("tiny_cite.yaml", Path("/tiny-model")), CITE_SHARED)


@pytest.mark.slow
@pytest.mark.e2e
def test_citations_recipe_end_to_end(from_tiny_upstream, tiny_model):
    tmp_path = from_tiny_upstream
    configfile = tmp_path / "tiny_cite.yaml"
    configfile.write_text(yaml.safe_dump(tiny_config("tiny_cite.yaml", tiny_model)))
    shared = ("results/tiny/models/base", "results/tiny/worlds/world/questions.jsonl")
    assert_upstream_up_to_date(tmp_path, configfile, shared)
    # Everything runs on the HF backend here: one core per job, two side by side.
    cores = e2e_cores("evaluate", "self_demos", "reference_sft")
    snakemake(*cores, "--configfile", str(configfile), "--directory", str(tmp_path))
    results = tmp_path / "results" / "tiny"
    products = results / "products"

    # Distillation: every training question's teacher answer, on the cite prompt with
    # the question's own five documents.
    examples = {e["id"]: e for e in read_jsonl(results / "data/cite_train/examples.jsonl")}
    distill = read_jsonl(products / "distill_data/train.jsonl")
    distill += read_jsonl(products / "distill_data/dev.jsonl")
    assert sorted(r["id"] for r in distill) == sorted(examples)
    for record in distill:
        example = examples[record["id"]]
        assert record["completion"][0]["content"] == example["reference"]
        prompt = record["prompt"][0]["content"]
        assert prompt.count("Document [") == 5 and "cite" in prompt
        assert example["source_docs"][0]["title"] in prompt

    # Fine-grained RS: QAMPARI answers grow an item at a time (up to 3), the others a
    # sentence at a time (up to 2); every source scored the chosen answers.
    beam = {r["id"]: r for r in read_jsonl(products / "fg_rs/train.jsonl")}
    beam.update({r["id"]: r for r in read_jsonl(products / "fg_rs/dev.jsonl")})
    for qid, record in beam.items():
        limit = 3 if alce_kind(examples[qid]) == "qampari" else 2
        assert 1 <= record["segments"] <= limit
    fg_stats = json.loads((products / "fg_rs/stats.json").read_text())
    assert set(fg_stats["by_source"]) == {"citation_recall", "citation_precision",
                                          "alce_correctness"}  # fmt: skip
    h_stats = json.loads((products / "h_rs/stats.json").read_text())
    assert h_stats["n_samples"] == 2 * len(examples)

    # Every model trained, each from its init on its own data.
    sfts = (("distilled", "base", "distill_data"), ("sft_fg_rs", "distilled", "fg_rs"),
            ("sft_h_rs", "distilled", "h_rs"))  # fmt: skip
    for name, init, data in sfts:
        metrics = json.loads((results / "models" / name / "metrics.json").read_text())
        assert metrics["kind"] == "sft" and metrics["init"] == init and metrics["steps"] >= 1
        assert metrics["n_train"] == len(read_jsonl(products / data / "train.jsonl"))
        assert metrics["n_dev"] == len(read_jsonl(products / data / "dev.jsonl"))
        assert metrics["dev_loss"] is not None
    for name, init in (("ppo_fg", "distilled"), ("ppo_h", "distilled"), ("ppo_fg_rs", "sft_fg_rs")):
        metrics = json.loads((results / "models" / name / "metrics.json").read_text())
        assert metrics["kind"] == "ppo" and metrics["init"] == init
        assert metrics["dev_reward"] is not None

    # The models evaluated on the same ALCE-shaped questions, with the NLI judge.
    test = read_jsonl(results / "data/cite_test/examples.jsonl")
    assert sorted(p.name for p in (results / "eval").iterdir()) == sorted(EVALUATED)
    for model in EVALUATED:
        run = results / "eval" / model / "cite_test/source"
        alce = json.loads((run / "metrics.json").read_text())["alce"]
        assert alce["all"]["n"] == len(test)
        assert {"asqa", "qampari", "eli5"} <= set(alce)
        assert alce["nli"]["nli_pairs"] >= 1  # the ELI5 claims at least
        assert "claims_nli" in alce["eli5"] and "str_em" in alce["asqa"]
        predictions = read_jsonl(run / "predictions.jsonl")
        kinds = [p["alce"]["kind"] for p in predictions]
        assert kinds == [alce_kind(e) for e in test]
    summary = (results / "report/summary.md").read_text()
    assert "## ALCE metrics" in summary and "### qampari" in summary
    assert "| cite_test | distilled | ppo_fg | correct |" in summary


def test_the_paper_scale_config_plans_its_graph(tmp_path):
    """config/paper/citations.yaml dry-runs (its data files stand in as ALCE fixtures)."""
    config = yaml.safe_load((ROOT / "config/paper/citations.yaml").read_text())
    fixture = ROOT / "tests/fixtures/formats/qa_alce_asqa.json"
    for node in config["datasets"].values():
        (tmp_path / node["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fixture, tmp_path / node["path"])
    proc = snakemake(
        "-n", "--configfile", str(ROOT / "config/paper/citations.yaml"),
        "--directory", str(tmp_path),
    )  # fmt: skip
    jobs = planned_jobs(proc.stdout)
    assert jobs["reference_sft"] == 1 and jobs["segment_beam"] == 1 and jobs["best_of_n"] == 1
    assert jobs["train"] == 3 and jobs["train_rl"] == 3 and jobs["evaluate"] == 6
    prepared = prepare(config)
    beam = prepared["products"]["fg_rs"]
    assert (beam["beam"], beam["samples_per_beam"], beam["max_segments"]) == (8, 2, 5)
    assert beam["per_dataset"]["qampari"]["max_segments"] == 10
    ppo = prepared["models"]["ppo_fg"]
    assert (ppo["kl_coef"], ppo["lam"], ppo["clip"], ppo["value_clip"]) == (0.3, 0.95, 0.2, 0.2)
    assert (ppo["learning_rate"], ppo["warmup"], ppo["samples_per_prompt"]) == (3.0e-5, 100, 4)
    assert ppo["quantization"] == "4bit" and prepared["models"]["ppo_h"]["holistic"]
    assert prepared["models"]["distilled"]["quantization"] == "4bit"
