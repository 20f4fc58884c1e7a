"""The backtracking recipe (config/backtracking.yaml's graph) end to end through Snakemake
on the tiny model: SFT on the step format, the backward DPO chain with each step's data
sampled from the model before it, the published step files' chain, evaluation in the
step format, the report; then one step's setting changed and the dry run that follows.
It starts from tests/tiny.yaml's upstream (world, BM25, datasets, base model), built
once for the tests. The CPU and paper-scale configs are checked by dry runs."""

import json
import re
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


def recipe_config(tiny_model: Path) -> dict:
    """tests/tiny_backtracking.yaml with the published chain over the two invented step
    files (by absolute path: the runs' folder is another)."""
    config = tiny_config("tiny_backtracking.yaml", tiny_model)
    fixtures = ROOT / "tests" / "fixtures" / "formats"
    files = [str(fixtures / f"pairs_backtracking_step{k}.jsonl") for k in (1, 2)]
    config["backtracking"]["published"] = {"files": files}
    return config


def test_the_recipe_shares_tiny_yaml_upstream():
    assert_shares_tiny_upstream(recipe_config(Path("/tiny-model")))


def planned_outputs(stdout: str, rule: str) -> list[str]:
    """The output of each planned job of `rule`, in the dry run's order."""
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    output: (.*)$", stdout, re.M)
    return [output for name, output in jobs if name == rule]


@pytest.mark.slow
@pytest.mark.e2e
def test_backtracking_recipe_end_to_end(from_tiny_upstream, tiny_model):
    tmp_path = from_tiny_upstream
    configfile = tmp_path / "tiny_backtracking.yaml"
    config = recipe_config(tiny_model)
    configfile.write_text(yaml.safe_dump(config))
    shared = ("results/tiny/models/base", "results/tiny/data/train/examples.jsonl")
    assert_upstream_up_to_date(tmp_path, configfile, shared)
    cores = e2e_cores("evaluate", "step_pairs", "step_sft", "pair_file", "pair_mix")
    args = ("--configfile", str(configfile), "--directory", str(tmp_path))

    # The dry run lists the chain's DPO nodes from the last step back, each after the
    # model it starts from.
    plan = snakemake("-n", *args).stdout
    trained = [Path(o).name for o in planned_outputs(plan, "train")]
    back = [m for m in trained if m.startswith("bt_back")]
    assert back == ["bt_back3", "bt_back2", "bt_back1"]
    assert trained.index("bt_sft") < trained.index("bt_back3")
    assert [m for m in trained if m.startswith("bt_pub")] == ["bt_pub2", "bt_pub1"]

    snakemake(*cores, *args)
    results = tmp_path / "results" / "tiny"
    products = results / "products"

    # SFT data: the true steps of two documents, then the answer.
    sft = read_jsonl(products / "bt_sft_data/train.jsonl")
    completion = sft[0]["completion"][0]["content"].splitlines()
    assert completion[0].startswith("Document 1: ") and completion[2].startswith("Answer: ")

    # Each step's pairs: sampled from the model that step starts from (on-policy), the
    # prompt chat-templated text ending in the true steps before it.
    for step, sampler in ((3, "sft"), (2, "back3"), (1, "back2")):
        folder = products / f"bt_pairs{step}_from_{sampler}"
        stats = json.loads((folder / "stats.json").read_text())
        assert stats["step"] == step and stats["steps"] == 3
        assert list(stats["error_rate_by_step"]) == [str(s) for s in range(step, 4)]
        # Step 2 samples 3 continuations per question (per_step), the others 2.
        assert stats["n_samples"] == 12 * (3 if step == 2 else 2)
        pairs = read_jsonl(folder / "train.jsonl")
        assert pairs and all(p["meta"] == {**p["meta"], "step": step} for p in pairs)
        samples = read_jsonl(folder / "samples.jsonl")
        assert len(samples) == 12 and all(s["id"].endswith(f"@step{step}") for s in samples)
        # The true steps before this one end the prompt, after the assistant's header.
        prefix = {s["question_id"]: s["prefix"] for s in samples}
        for pair in pairs:
            before = prefix[pair["id"].split("-step")[0]]
            assert len(before.splitlines()) == step - 1
            assert pair["prompt"].startswith("<|im_start|>")
            assert pair["prompt"].endswith("<|im_start|>assistant\n" + before)
    for model, init in (("bt_back3", "bt_sft"), ("bt_back2", "bt_back3"), ("bt_back1", "bt_back2"),
                        ("bt_pub2", "bt_sft"), ("bt_pub1", "bt_pub2")):  # fmt: skip
        metrics = json.loads((results / "models" / model / "metrics.json").read_text())
        assert (metrics["kind"], metrics["init"]) == ("dpo", init)
    # The published files: text pairs, their prompts as written.
    published = read_jsonl(products / "bt_published2/train.jsonl")
    assert published[0]["meta"]["chat_template_applied"] and published[0]["meta"]["step"] == 2

    # Evaluation in the step format, and the report's step section.
    for model in ("bt_sft", "bt_back1", "bt_pub1"):
        metrics = json.loads((results / f"eval/{model}/test/bm25/metrics.json").read_text())
        steps = metrics["steps"]
        assert metrics["n"] == 8 and set(steps["decision_accuracy_by_step"]) == {"1", "2"}
        predictions = read_jsonl(results / f"eval/{model}/test/bm25/predictions.jsonl")
        assert all(len(p["steps"]["decisions"]) == 2 for p in predictions)
    summary = (results / "report/summary.md").read_text()
    assert "## Step decisions" in summary and "| bt_back1 | test | bm25 | 8 |" in summary

    # One step's setting changed: that step's data and the chain after it rerun, not
    # the steps before it, nor the other chain.
    config["backtracking"]["per_step"] = {2: {"n": 2}}
    configfile.write_text(yaml.safe_dump(config))
    plan = snakemake("-n", *args).stdout
    assert [Path(o).parent.name for o in planned_outputs(plan, "step_pairs")] == [
        "bt_pairs2_from_back3", "bt_pairs1_from_back2"
    ]  # fmt: skip
    assert [Path(o).name for o in planned_outputs(plan, "train")] == ["bt_back2", "bt_back1"]
    assert planned_jobs(plan)["evaluate"] == 1


@pytest.mark.slow
def test_the_cpu_config_plans_the_four_rows_and_both_chains(tmp_path):
    configfile = ROOT / "config/backtracking.yaml"
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    jobs = planned_jobs(proc.stdout)
    # SFT; backward and forward chains of four; the mixed run. Ten step products: four
    # from the SFT model (shared), three more per chain.
    assert jobs["train"] == 10 and jobs["step_pairs"] == 10 and jobs["evaluate"] == 4
    trained = [Path(o).name for o in planned_outputs(proc.stdout, "train")]
    assert [m for m in trained if m.startswith("bt_back")] == [f"bt_back{k}" for k in (4, 3, 2, 1)]
    assert [m for m in trained if m.startswith("bt_fwd")] == [f"bt_fwd{k}" for k in (1, 2, 3, 4)]


@pytest.mark.slow
def test_the_paper_scale_config_plans_its_graph(tmp_path):
    """config/paper/backtracking.yaml dry-runs (its data files stand in as small fixtures)."""
    data = tmp_path / "data" / "backtracking"
    data.mkdir(parents=True)
    step = (ROOT / "tests/fixtures/formats/pairs_backtracking_step2.jsonl").read_text()
    for k in (1, 2, 3, 4):
        (data / f"llama3_step{k}.jsonl").write_text(step)
    question = {"question": "who founded kesh", "answer": ["Mira Okafor"]}
    (data / "nq_test.jsonl").write_text(json.dumps(question) + "\n")
    passage = {"id": "1", "contents": '"Kesh"\nKesh was founded by Mira Okafor.'}
    (data / "psgs_w100.jsonl").write_text(json.dumps(passage) + "\n")
    configfile = ROOT / "config/paper/backtracking.yaml"
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    jobs = planned_jobs(proc.stdout)
    assert jobs["pair_file"] == 4 and jobs["train"] == 4 and jobs["evaluate"] == 1
    trained = [Path(o).name for o in planned_outputs(proc.stdout, "train")]
    assert trained == ["bt_pub4", "bt_pub3", "bt_pub2", "bt_pub1"]
    prepared = prepare(yaml.safe_load(configfile.read_text()))
    first = prepared["models"]["bt_pub4"]
    assert first["init"] == "base" and prepared["models"]["bt_pub1"]["init"] == "bt_pub2"
    assert (first["beta"], first["learning_rate"]) == (0.1, 1.0e-6)
    assert first["finetune"] == "full" and first["deepspeed"] == "zero3"
