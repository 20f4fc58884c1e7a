"""The HF backend through the evaluate stage as rule `evaluate` runs it (`python -m ragtrain
evaluate`, the node's settings from tests/tiny.yaml on HF), on the tiny model: what the
tiny DAG's end-to-end test checked of each evaluation when it also ran the whole DAG on HF.

The DAG itself runs once, on vLLM (tests/test_workflow.py); on HF, Snakemake runs
self-demos in tests/test_faults.py and evaluations in tests/test_rl_workflow.py, and
`make slurm-test` the whole tiny DAG.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from ragtrain.graph.config import prepare
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # loads the tiny model, in a stage subprocess

PEOPLE = ["Marel Dovant", "Tollan Brisk", "Ilse Quorn", "Pelu Ousk"]
TOWNS = ["Kesh", "Ulbrin", "Marrowby", "Stavenholm"]


def examples() -> list[dict]:
    """Eight test questions with two passages each: five answerable, three not."""
    out = []
    for i in range(8):
        person, town = PEOPLE[i % 4], TOWNS[i % 4]
        answerable = i < 5
        docs = [
            {"id": f"p{i}", "title": person, "score": 2.0,
             "text": f"{person} was born in {town}." if answerable else f"{person} paints."},
            {"id": f"d{i}", "title": town, "score": 1.0, "text": f"{town} is a river town."},
        ]  # fmt: skip
        out.append(
            {
                "id": f"q{i}",
                "question": f"Where was {person} born?",
                "answers": [town] if answerable else [],
                "docs": docs,
                "meta": {"type": "single" if answerable else "unanswerable"},
            }
        )
    return out


def evaluation_node(retrieval: str) -> dict:
    """tests/tiny.yaml's evaluation of the base model with `retrieval`, on HF."""
    cfg = yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text())
    cfg["models"]["base"]["path"] = "/tiny-model"
    cfg["generation"]["backend"] = "hf"
    [node] = [
        e
        for e in prepare(cfg)["evaluations"]
        if (e["model"], e["retrieval"]) == ("base", retrieval)
    ]
    assert node["generation"]["backend"] == "hf"
    return {k: v for k, v in node.items() if k != "resources"}


@pytest.mark.parametrize("retrieval", ["bm25", "none"])
def test_the_evaluate_stage_on_hf(retrieval, tiny_model, tmp_path):
    node = evaluation_node(retrieval)
    data = tmp_path / "test" / "examples.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(ex) + "\n" for ex in examples()))
    folder = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "ragtrain", "evaluate", "--params", json.dumps(node),
         "--model", str(tiny_model), "--examples", str(data),
         "--prompt", str(ROOT / "resources" / "prompts" / f"{node['prompt']}.jinja"),
         "--predictions", str(folder / "predictions.jsonl"),
         "--metrics", str(folder / "metrics.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["n"] == 8
    assert metrics["n_answerable"] + metrics["n_unanswerable"] == 8
    assert metrics["generated_tokens"] > 0
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").open()]
    assert len(predictions) == 8
    assert all(set(p) >= {"prompt", "docs", "prediction", "answers", "scores"} for p in predictions)
    expected_docs = 0 if retrieval == "none" else 2
    assert all(len(p["docs"]) == expected_docs for p in predictions)
    # Greedy answers of at most max_new_tokens tokens each.
    assert metrics["generated_tokens"] <= 8 * node["generation"]["max_new_tokens"]
    assert ("was born in" in predictions[0]["prompt"]) == (retrieval != "none")
