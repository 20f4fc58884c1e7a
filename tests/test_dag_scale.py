"""bench/dag_scale.py: its generated config dry-runs, with the job count it predicts."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from ragtrain.graph.dryrun import planned_jobs
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("dag_scale", ROOT / "bench" / "dag_scale.py")
dag_scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dag_scale)


@pytest.mark.parametrize(("models", "datasets", "rounds"), [(3, 2, 2), (2, 1, 0)])
def test_dry_run_plans_the_expected_jobs(tmp_path, models, datasets, rounds):
    configfile = tmp_path / "dag_scale.yaml"
    config = dag_scale.make_config(models, datasets, rounds)
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    _, output = dag_scale.dry_run(configfile, tmp_path)
    assert planned_jobs(output) == dag_scale.expected_jobs(models, datasets, rounds)


def test_every_model_is_evaluated_on_every_dataset():
    from ragtrain.graph.config import prepare

    prepared = prepare(dag_scale.make_config(5, 3, 1))
    trained = [n for n, m in prepared["models"].items() if m["kind"] in ("sft", "dpo")]
    assert len(trained) == 5 + 1  # and the round's query writer, never evaluated
    evaluated = {(e["model"], e["dataset"]) for e in prepared["evaluations"]}
    llms = {"base", *(n for n in trained if not n.startswith("pq_"))}
    assert evaluated == {(m, f"eval{i}") for m in llms for i in range(3)}
