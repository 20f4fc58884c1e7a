"""Training as several processes (ragtrain.launch), and the launch commands for GPUs and
nodes. On CPU the processes are real: `accelerate launch --multi_gpu --num_processes 2`
with accelerate in CPU mode, which makes them a gloo group (accelerate's `--cpu` flag
would start a single process)."""

import json
import os
import subprocess
import sys

import pytest

from ragtrain import launch
from ragtrain.graph.cluster import job_resources, launch_args
from tests.conftest import ROOT
from tests.test_train import pairs_file, params, sft_file

STAGE = ["train", "--params", "{}"]


def test_one_process_runs_the_stage_itself():
    assert launch.command(STAGE, processes=1) == [sys.executable, "-m", "ragtrain", *STAGE]


def test_several_gpus_on_one_node_use_accelerate_launch():
    cmd = launch.command(STAGE, processes=4)
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--num_machines") + 1] == "1"
    assert cmd[-5:] == ["-m", "ragtrain", *STAGE]


def test_several_nodes_srun_one_task_per_node_that_meets_at_the_first_node(monkeypatch):
    cmd = launch.command(STAGE, processes=8, nodes=2)
    assert cmd[:3] == ["srun", "--nodes=2", "--ntasks-per-node=1"]
    assert "--node-task" in cmd and cmd[-3:] == STAGE

    monkeypatch.setattr(launch, "_first_host", lambda nodelist: "gpu01")
    env = {"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    task = launch.node_task_command(STAGE, processes=8, nodes=2, environ=env)
    assert task[task.index("--num_processes") + 1] == "16"
    assert task[task.index("--num_machines") + 1] == "2"
    assert task.count("--num_machines") == 1
    assert task[task.index("--machine_rank") + 1] == "1"
    assert task[task.index("--main_process_ip") + 1] == "gpu01"
    with pytest.raises(RuntimeError, match="SLURM_NODEID"):
        launch.node_task_command(STAGE, 8, 2, environ={})


def test_without_cuda_one_process_whatever_the_gpu_count():
    # The fake GPUs of the Slurm test cluster: the job asked for one, there is no CUDA.
    assert launch.processes_for(2) == 1


def test_job_resources_from_the_node_over_the_stage_defaults():
    assert job_resources(None, "train") == {"gpu": 1, "mem_mb": 32000, "runtime": 720}
    assert job_resources(None, "cpu", attempt=2) == {"mem_mb": 16000, "runtime": 240}
    given = {"gpu": 8, "gpu_model": "h100", "mem_mb": 500000, "slurm_partition": "gpu"}
    assert job_resources(given, "train", attempt=2) == {
        "gpu": 8,
        "gpu_model": "h100",
        "mem_mb": 1000000,
        "runtime": 1440,
        "slurm_partition": "gpu",
    }
    # Stage defaults from the config's top-level `resources` (a small test cluster).
    assert job_resources(None, "train", defaults={"mem_mb": 2000}) == {
        "gpu": 1,
        "mem_mb": 2000,
        "runtime": 720,
    }
    assert launch_args(given) == ["--gpus", "8", "--nodes", "1"]


def test_several_nodes_ask_for_gpus_per_node_and_a_task_per_node():
    out = job_resources({"gpu": 8, "gpu_model": "h100", "nodes": 4}, "train")
    assert out["gres"] == "gpu:h100:8" and "gpu" not in out and "gpu_model" not in out
    assert (out["nodes"], out["tasks"], out["tasks_per_gpu"], out["mpi"]) == (4, 4, 0, "srun")


def _run(kind, data, model, tmp_path, processes):
    out = tmp_path / f"{kind}-{processes}"
    node = params(kind, save_steps=1, **({"beta": 0.1} if kind == "dpo" else {}))
    cmd = [sys.executable, "-m", "ragtrain.launch", "--processes", str(processes), "--"]
    cmd += ["train", "--params", json.dumps(node), "--init", str(model), "--train", str(data)]
    cmd += ["--dev", "", "--work", str(tmp_path / f"work-{kind}-{processes}")]
    cmd += ["--output", str(out), "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["sft", "dpo"])
@pytest.mark.slow
def test_two_cpu_processes_train_the_same_kind_of_model_as_one(kind, tiny_model, tmp_path):
    path = tmp_path / f"{kind}.jsonl"
    data = sft_file(path, 16) if kind == "sft" else pairs_file(path, range(16))
    one, _ = _run(kind, data, tiny_model, tmp_path, processes=1)
    two, log = _run(kind, data, tiny_model, tmp_path, processes=2)

    assert "launch: 2 process(es)" in log
    assert "accelerate.commands.launch" in log
    files = {p.relative_to(two) for p in two.rglob("*")}
    assert files == {p.relative_to(one) for p in one.rglob("*")}
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert (m1["processes"], m2["processes"]) == (1, 2)
    # 16 examples in batches of 4 per process: each step of two processes sees 8.
    assert (m1["steps"], m2["steps"]) == (4, 2)
    # Only the first process wrote, and left no work folder behind.
    assert not list(tmp_path.glob(f"work-{kind}-2/*"))
