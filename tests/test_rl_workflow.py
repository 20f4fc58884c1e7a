"""Reward models and RL end to end through Snakemake, on the tiny model (HF backend):
reward model, PPO, GRPO, RLOO, a reward product, best-of-n and segment-beam SFT data,
the SFT models trained on them, evaluations and the report. It starts from tests/tiny.yaml's
upstream (data, self-demos, SFT model), built once for the tests."""

import json
from pathlib import Path

import pytest
import yaml

from ragtrain.graph.config import prepare
from ragtrain.graph.dryrun import planned_jobs
from tests.conftest import (
    E2E_CORES,
    UPSTREAM_NODES,
    assert_upstream_up_to_date,
    snakemake,
    tiny_config,
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def test_the_rl_recipe_shares_tiny_yaml_upstream():
    """What lets the end-to-end test below start from tiny.yaml's upstream: the same run
    name and the same upstream nodes, every setting (defaults filled) alike."""
    tiny = prepare(tiny_config("tiny.yaml", Path("/tiny-model")))
    rl = prepare(tiny_config("tiny_rl.yaml", Path("/tiny-model")))
    assert rl["run"] == tiny["run"]
    for section, names in UPSTREAM_NODES.items():
        for name in names:
            assert rl[section][name] == tiny[section][name], f"{section}.{name} differs"


@pytest.mark.slow
@pytest.mark.e2e
def test_rl_recipe_end_to_end(from_tiny_upstream, tiny_model):
    tmp_path = from_tiny_upstream
    cfg = tiny_config("tiny_rl.yaml", tiny_model)
    configfile = tmp_path / "tiny_rl.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    assert_upstream_up_to_date(tmp_path, configfile)
    snakemake(*E2E_CORES, "--configfile", str(configfile), "--directory", str(tmp_path))
    results = tmp_path / "results" / "tiny"

    rm = json.loads((results / "models/rm/metrics.json").read_text())
    assert rm["kind"] == "reward_model" and 0.0 <= rm["dev_pair_accuracy"] <= 1.0
    for name, kind in (("ppo", "ppo"), ("grpo", "grpo"), ("rloo", "rloo")):
        folder = results / "models" / name
        assert (folder / "model.safetensors").is_file() and (folder / "loss.png").is_file()
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["kind"] == kind
        assert metrics["dev_reward"] is not None and metrics["dev_reward_init"] is not None
    ppo_log = (tmp_path / "logs/tiny/models/ppo.log").read_text()
    assert "iteration 2/2" in ppo_log

    # Every sample scored by the reward model; best-of-n keeps one sample per question.
    scored = read_jsonl(results / "products/scored/data.jsonl")
    assert all(isinstance(s["reward_model"], float) for r in scored for s in r["samples"])
    best = read_jsonl(results / "products/best/train.jsonl")
    best += read_jsonl(results / "products/best/dev.jsonl")
    demos = {r["id"]: r for r in read_jsonl(results / "products/demos/data.jsonl")}
    assert len(best) == len(demos)
    for record in best:
        texts = [s["text"].strip() for s in demos[record["id"]]["samples"]]
        assert record["completion"][0]["content"] in texts
    beam = read_jsonl(results / "products/beam/train.jsonl")
    assert beam and all(1 <= r["segments"] <= 2 for r in beam)

    for model in ("sft", "ppo", "grpo", "rloo", "sft_best", "sft_beam"):
        metrics = json.loads((results / "eval" / model / "test/bm25/metrics.json").read_text())
        assert metrics["n"] == 8
    summary = (results / "report/summary.md").read_text()
    for model in ("ppo", "grpo", "rloo", "sft_best", "sft_beam"):
        assert f"| {model} | test | bm25 |" in summary
    assert "dev_reward" in summary and "segment beam" in summary
    assert not any((results / "work").glob("*/*"))

    # A new KL coefficient reruns PPO, its evaluation and the report only.
    cfg["models"]["ppo"]["kl_coef"] = 0.1
    configfile.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(tmp_path))
    assert planned_jobs(proc.stdout) == {"train_rl": 1, "evaluate": 1, "report": 1, "all": 1}
