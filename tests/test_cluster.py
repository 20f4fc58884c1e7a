"""Job resources from config nodes: the checks, vLLM's tensor-parallel size, and what
Snakemake plans (and submits to Slurm) from them."""

import copy
import importlib.util
import json
import re

import pytest
import yaml

from ragtrain.graph.config import ConfigError, prepare
from ragtrain.training.toolkit import DEEPSPEED_CONFIGS, DEEPSPEED_STAGES, deepspeed_config
from tests.conftest import ROOT
from tests.test_workflow import snakemake

TINY = yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text())


def tiny(**changes):
    cfg = copy.deepcopy(TINY)
    cfg["models"]["base"]["path"] = "unused"
    for key, value in changes.items():
        section, name, field = key.split("__")
        cfg[section][name][field] = value
    return cfg


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"models__base__deepspeed": "zero2"}, "models.base.deepspeed", "no DeepSpeed"),
        ({"products__demos__resources": {"nodes": 2}}, "products.demos.resources.nodes", "one"),
    ],
)
def test_launch_settings_are_checked(change, key, message):
    with pytest.raises(ConfigError, match=re.escape(key) + ".*" + message):
        prepare(tiny(**change))


def test_zero3_is_for_sft_and_dpo_only():
    cfg = tiny(models__sft__deepspeed="zero3")
    cfg["models"]["rm"] = {"kind": "reward_model", "init": "base", "data": "pairs"}
    assert prepare(cfg)["models"]["sft"]["deepspeed"] == "zero3"
    cfg["models"]["rm"]["deepspeed"] = "zero3"
    with pytest.raises(ConfigError, match=r"models\.rm\.deepspeed.*\['zero2'\]"):
        prepare(cfg)


def test_several_nodes_only_for_launched_training():
    cfg = tiny(models__dpo__resources={"nodes": 2, "gpu": 8})
    prepare(cfg)
    cfg["models"]["base"]["resources"] = {"nodes": 2}
    with pytest.raises(ConfigError, match=r"models\.base\.resources\.nodes.*one node"):
        prepare(cfg)


def test_generating_jobs_shard_vllm_over_their_gpus():
    cfg = tiny(products__demos__resources={"gpu": 4})
    cfg["evaluate"][0]["resources"] = {"gpu": 2}
    out = prepare(cfg)
    assert out["products"]["demos"]["generation"]["tensor_parallel_size"] == 4
    entry = cfg["evaluate"][0]
    sizes = {
        e["generation"]["tensor_parallel_size"]
        for e in out["evaluations"]
        if e["model"] in entry["models"] and e["retrieval"] in entry["retrieval"]
    }
    assert sizes == {2}
    assert {e["generation"]["tensor_parallel_size"] for e in out["evaluations"]} == {1, 2}
    # A size the node chose itself stays.
    cfg["products"]["demos"]["generation"]["tensor_parallel_size"] = 2
    assert prepare(cfg)["products"]["demos"]["generation"]["tensor_parallel_size"] == 2


def _dry_run(cfg, tmp_path, *args):
    cfg["models"]["base"]["path"] = str(tmp_path / "model")
    (tmp_path / "model").mkdir(exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return snakemake("-n", "-p", "--configfile", str(path), "--directory", str(tmp_path), *args)


def _job(stdout: str, rule: str, wildcard: str) -> str:
    for block in stdout.split("\n\n"):
        if f"rule {rule}:" in block and wildcard in block:
            return block
    raise AssertionError(f"no {rule} job for {wildcard} in the plan")


def test_the_plan_asks_for_each_nodes_resources(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["resources"] = {"cpu": {"mem_mb": 1500}}
    cfg["models"]["dpo"]["resources"] = {
        "gpu": 8,
        "gpu_model": "h100",
        "mem_mb": 64000,
        "runtime": 600,
        "slurm_partition": "gpu",
    }
    out = _dry_run(cfg, tmp_path).stdout
    dpo = _job(out, "train", "model=dpo")
    assert re.search(r"gpu=8\b", dpo) and "gpu_model=h100" in dpo
    assert "mem_mb=64000" in dpo and "runtime=600" in dpo and "slurm_partition=gpu" in dpo
    assert "python -m ragtrain.launch --gpus 8 --nodes 1 -- train" in dpo
    sft = _job(out, "train", "model=sft")
    assert re.search(r"gpu=1\b", sft) and "mem_mb=32000" in sft
    # A CPU stage: the config's default for the stage, no GPU.
    judge = _job(out, "judge", "product=judged")
    assert "mem_mb=1500" in judge and "gpu=" not in judge
    assert "gpu=1" in _job(out, "self_demos", "product=demos")


def test_new_resources_rerun_nothing(tmp_path):
    cfg = copy.deepcopy(TINY)
    first = _dry_run(cfg, tmp_path).stdout
    cfg["models"]["sft"]["resources"] = {"gpu": 2, "mem_mb": 1000}
    second = _dry_run(cfg, tmp_path).stdout
    # Same params for every job: the node's JSON leaves `resources` out. (Sorted: other
    # resources may change the order in which the scheduler lists the jobs.)
    params = sorted(re.findall(r"--params '[^']*'", first))
    assert params and params == sorted(re.findall(r"--params '[^']*'", second))


def test_unknown_resource_names_are_refused_by_the_schema(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["models"]["sft"]["resources"] = {"gpus": 2}
    cfg["models"]["base"]["path"] = str(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", str(path), "--directory", str(tmp_path), check=False)
    assert proc.returncode != 0
    assert "gpus" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", DEEPSPEED_STAGES)
def test_deepspeed_configs_leave_their_sizes_to_the_trainer(name):
    ds = json.loads((DEEPSPEED_CONFIGS / f"{name}.json").read_text())
    assert ds["zero_optimization"]["stage"] == int(name[-1])
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert ds[key] == "auto"  # filled from the node's batch_size and grad_accum
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ValueError, match="needs the deepspeed package"):
            deepspeed_config(name)
    else:
        assert deepspeed_config(name) == DEEPSPEED_CONFIGS / f"{name}.json"
    with pytest.raises(ValueError, match="expected one of"):
        deepspeed_config("zero4")
