"""The workflow through Snakemake: dry runs of every config, lint, and the tiny DAG end to
end (once, on vLLM: the HF backend runs the DAG in tests/test_rl_workflow.py and
tests/test_faults.py, its evaluate stage alone in tests/test_hf_backend.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from ragtrain.graph.dryrun import planned_jobs
from tests.conftest import E2E_CORES, ROOT, assert_upstream_up_to_date, snakemake, tiny_config

# The CPU configs; those under config/paper/ name data files a dry run needs, and each
# has its own dry-run test that provides them (tests/test_self_demos_recipe.py).
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))
# tests/tiny.yaml's models trained beside DPO (TRL's KTO), from the base model; ORPO and
# SimPO train in tests/test_preference_methods.py.
PREFERENCE_MODELS = ("kto",)


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda p: p.name)
def test_dry_run_of_every_config(configfile, tmp_path):
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    jobs = planned_jobs(proc.stdout)
    assert jobs["all"] == 1 and jobs["report"] == 1
    # Every config evaluates something: LLMs on QA, or retrievers on a retrieval task.
    assert jobs.get("evaluate", 0) + jobs.get("evaluate_retrieval", 0) >= 1


def test_lint_of_the_pseudo_query_config():
    proc = snakemake(
        "--lint", "--configfile", str(ROOT / "config" / "pseudo_query.yaml"), check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lint():
    proc = snakemake("--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unknown_name_stops_before_any_job(tmp_path):
    cfg = yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text())
    cfg["retrievers"]["bm25"]["corpus"] = "wikipedia"
    configfile = tmp_path / "bad.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    proc = snakemake(
        "-n", "--configfile", str(configfile), "--directory", str(tmp_path), check=False
    )
    assert proc.returncode != 0
    assert "retrievers.bm25.corpus" in proc.stderr + proc.stdout
    assert "wikipedia" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_end_to_end(from_tiny_upstream, tiny_model):
    # From the shared upstream (up to the SFT model, built once): DPO, evaluation, report;
    # then the SFT model deleted and rebuilt with what stands on it.
    tmp_path = from_tiny_upstream
    configfile = tmp_path / "tiny.yaml"
    configfile.write_text(yaml.safe_dump(tiny_config("tiny.yaml", tiny_model)))
    assert_upstream_up_to_date(tmp_path, configfile)
    args = (*E2E_CORES, "--configfile", str(configfile), "--directory", str(tmp_path))
    finished = snakemake(*args)
    # (The jobs it ran: the shared upstream reused; DPO and KTO the models trained.)
    jobs = planned_jobs(finished.stderr)
    assert jobs["train"] == 1 + len(PREFERENCE_MODELS) and jobs["export_gguf"] == 1
    assert not {"self_demos", "judge", "sft_data"} & set(jobs)
    check_export(tmp_path / "results" / "tiny" / "exports")

    results = tmp_path / "results" / "tiny"
    evaluations = [("base", r) for r in ("bm25", "dense", "none")]
    evaluations += [(m, "bm25") for m in ("sft", "dpo", *PREFERENCE_MODELS)]
    check_evaluations(results, evaluations)
    for retriever in ("bm25", "dense"):
        stats = json.loads((results / "retrieval" / retriever / "test" / "stats.json").read_text())
        assert stats["kind"] == retriever
        assert stats["answer_recall@2"] >= 0.5
    # The synthetic questions name their entity: BM25 finds the gold passage for most.
    bm25 = json.loads((results / "retrieval/bm25/test/stats.json").read_text())
    assert bm25["gold_recall@2"] >= 0.5

    check_products(results)
    check_trained(results)
    check_model_judges(results)

    summary = check_summary(results)
    assert "## Training" in summary and "## Training data" in summary
    csv_lines = (results / "report" / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,dataset,retrieval,judges,n,em,f1")
    assert len(csv_lines) == 1 + len(evaluations) + 2  # base on dense and none, judged
    assert "## Errors by cause" in summary
    # Three models on test/bm25: three pairs, each compared on EM and accuracy.
    assert summary.count("| test | bm25 | ") >= 6 and "## Paired differences" in summary
    assert (results / "report" / "metrics.png").stat().st_size > 1000
    assert (results / "report" / "training.png").stat().st_size > 1000
    # Resumable state is dropped once a node's outputs are complete.
    assert not any((results / "work").glob("*/*"))

    # The SFT model deleted (by hand, or by a forced rerun killed halfway): a plain rerun
    # rebuilds it and redoes what stands on it, nothing upstream of it (every node's
    # output is a target of `all`). Its work folder was dropped: trained from step 1.
    after_sft = [
        results / path
        for path in ("models/dpo", "eval/sft/test/bm25/metrics.json",
                     "eval/dpo/test/bm25/metrics.json", "report/summary.md")
    ]  # fmt: skip
    mtimes = {p: p.stat().st_mtime_ns for p in after_sft}
    shutil.rmtree(results / "models/sft")
    rerun = snakemake(*args)
    # SFT and DPO, not the models trained from the base model on the same data.
    assert planned_jobs(rerun.stderr) == {"train": 2, "evaluate": 2, "report": 1, "all": 1}
    assert "rule train:\n    input: results/tiny/models/base" in rerun.stderr  # SFT
    assert (results / "models/sft/metrics.json").is_file()
    steps = json.loads((results / "models/sft/metrics.json").read_text())["steps"]
    log = (tmp_path / "logs/tiny/models/sft.log").read_text()
    assert "resuming from" not in log and f"trained steps 1 to {steps} of {steps}" in log
    assert all(p.stat().st_mtime_ns > mtimes[p] for p in after_sft)
    check_trained(results)
    check_evaluations(results, [(m, "bm25") for m in ("sft", "dpo", *PREFERENCE_MODELS)])
    check_summary(results)
    assert not any((results / "work").glob("*/*"))

    # Nothing left to do on a second look: every output consistent with its inputs.
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    assert "Nothing to be done" in proc.stdout + proc.stderr

    cfg = yaml.safe_load(configfile.read_text())
    # A new DPO beta reruns that model, its evaluation and the report; nothing upstream.
    cfg["models"]["dpo"]["beta"] = 0.5
    configfile.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    assert planned_jobs(proc.stdout) == {"train": 1, "evaluate": 1, "report": 1, "all": 1}
    assert "Params have changed since last execution" in proc.stdout
    assert "results/tiny/models/dpo" in proc.stdout

    # A new k reruns that retriever's searches and what depends on them, not its index.
    cfg["models"]["dpo"]["beta"] = 0.1
    cfg["retrievers"]["bm25"]["k"] = 1
    configfile.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    jobs = planned_jobs(proc.stdout)
    assert "index" not in jobs
    assert jobs["retrieve"] == 2  # train (self-demos) and test
    assert jobs["self_demos"] == 1 and jobs["train"] == 2 + len(PREFERENCE_MODELS)

    report = tmp_path / "report.html"
    snakemake(
        "--configfile", str(configfile), "--directory", str(tmp_path), "--report", str(report)
    )
    assert report.stat().st_size > 10_000


def check_evaluations(results: Path, evaluations: list[tuple[str, str]]) -> None:
    for model, retrieval in evaluations:
        folder = results / "eval" / model / "test" / retrieval
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["n"] == 8
        assert metrics["n_answerable"] + metrics["n_unanswerable"] == 8
        assert metrics["generated_tokens"] > 0
        predictions = [json.loads(line) for line in (folder / "predictions.jsonl").open()]
        assert len(predictions) == 8
        assert all(
            set(p) >= {"prompt", "docs", "prediction", "answers", "scores"} for p in predictions
        )
        expected_docs = 0 if retrieval == "none" else 2
        assert all(len(p["docs"]) == expected_docs for p in predictions)


def check_summary(results: Path) -> str:
    summary = (results / "report" / "summary.md").read_text()
    for model in ("base", "sft", "dpo"):
        assert f"| {model} | test | bm25 |" in summary
    return summary


def check_model_judges(results: Path) -> None:
    """The tiny model as its own label and relevance judge: each verdict beside its raw
    replies; a reply that does not parse is retried once, then takes the fallback
    (`incorrect`) for labels and is dropped for relevance."""
    for retrieval in ("dense", "none"):
        judged = results / "eval/base/test" / retrieval / "judged"
        metrics = json.loads((judged / "metrics.json").read_text())
        assert metrics["judged"] is True
        assert metrics["judges"] == {"label": "label", "relevance": "relevance"}
        replies = metrics["replies"]["label"]
        assert replies["n"] == 8
        assert (
            replies["parsed_first_try"] + replies["parsed_after_retry"] + replies["unparsed"] == 8
        )
        rows = [json.loads(line) for line in (judged / "verdicts.jsonl").open()]
        assert len(rows) == 8
        for row in rows:
            assert row["label"] in ("correct", "incorrect", "refuse")
            assert row["rules_label"] in ("correct", "incorrect", "refuse")
            assert 1 <= len(row["label_raw"]) <= 2
        assert set(metrics["errors"]) == {"neither", "generation_miss", "retrieval_miss", "both"}
    dense_rows = [
        json.loads(line) for line in (results / "eval/base/test/dense/judged/verdicts.jsonl").open()
    ]
    assert all("relevance_raw" in row for row in dense_rows)
    relevance = json.loads((results / "judged/relevance/test/dense/stats.json").read_text())
    assert relevance["replies"]["n"] == 8
    # Closed book: no documents, no relevance judge asked.
    assert not (results / "judged/relevance/test/none").exists()
    # The judge product labelled by the model keeps the rules' label beside the model's.
    stats = json.loads((results / "products/judged_by_model/stats.json").read_text())
    assert stats["judge"] == "label" and stats["rules"]["n"] == stats["n_samples"] == 24
    samples = [
        s
        for line in (results / "products/judged_by_model/data.jsonl").open()
        for s in json.loads(line)["samples"]
    ]
    assert all("rules_label" in s and 1 <= len(s["judge_raw"]) <= 2 for s in samples)
    # The raw replies are cached: a changed regex reads them instead of asking again.
    assert (results / "cache/judges/label.jsonl").stat().st_size > 0


def check_products(results: Path) -> None:
    products = results / "products"
    demos = [json.loads(line) for line in (products / "demos/data.jsonl").open()]
    assert len(demos) == 12 and all(len(d["samples"]) == 2 for d in demos)
    assert all(d["prompt"][0]["role"] == "user" for d in demos)
    stats = json.loads((products / "demos/stats.json").read_text())
    assert stats["shards"] == 3 and stats["n_samples"] == 24

    judged = json.loads((products / "judged/stats.json").read_text())
    assert sum(judged["labels"].values()) == 24

    # With gold fallback every question gets a demonstration; a fifth is held out.
    sft = json.loads((products / "sft_data/stats.json").read_text())
    assert sft["n_train"] + sft["n_dev"] == 12
    assert sft["n_dev"] >= 1
    pairs = [json.loads(line) for line in (products / "pairs/train.jsonl").open()]
    dev_pairs = [json.loads(line) for line in (products / "pairs/dev.jsonl").open()]
    assert pairs and dev_pairs
    assert not {p["example_id"] for p in pairs} & {p["example_id"] for p in dev_pairs}
    for pair in pairs + dev_pairs:
        assert pair["chosen"] != pair["rejected"]
        assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"


def check_trained(results: Path) -> None:
    for name in ("sft", "dpo", *PREFERENCE_MODELS):
        folder = results / "models" / name
        for file in (
            "config.json",
            "model.safetensors",
            "tokenizer_config.json",
            "adapter/adapter_config.json",
            "trainer_state.json",
            "loss.png",
        ):
            assert (folder / file).is_file(), f"{name}: no {file}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["kind"] == name and metrics["steps"] >= 1
        assert metrics["dev_loss"] is not None
    dpo = json.loads((results / "models/dpo/metrics.json").read_text())
    assert dpo["init"] == "sft"
    # Its step budget (tiny.yaml's max_steps) ends training before the epoch does.
    node = yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text())["models"]["dpo"]
    assert dpo["steps"] == node["max_steps"] < math.ceil(dpo["n_train"] / node["batch_size"])
    assert 0.0 <= dpo["dev_reward_accuracy"] <= 1.0
    # KTO on the judged samples: each distinct train answer once, right or wrong (the
    # tiny model is mostly wrong).
    kto = json.loads((results / "models/kto/metrics.json").read_text())
    judged = [json.loads(line) for line in (results / "products/judged/data.jsonl").open()]
    train_samples = sum(len(r["samples"]) for r in judged if r["split"] == "train")
    assert kto["n_desirable"] + kto["n_undesirable"] == kto["n_train"] <= train_samples
    assert kto["n_undesirable"] >= 1 and kto["n_dev"] >= 1


def check_export(exports: Path) -> None:
    """KTO's GGUF file: the tiny Llama's 2 layers of 9 tensors, embeddings and final norm,
    its matrices in 8-bit blocks, as `export_type: q8_0` asked."""
    import gguf

    reader = gguf.GGUFReader(exports / "kto.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert len(types) == 2 * 9 + 2
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["output_norm.weight"] == "F32"
    stats = json.loads((exports / "kto.json").read_text())
    assert (
        stats["export_type"] == "q8_0" and stats["bytes"] == (exports / "kto.gguf").stat().st_size
    )
