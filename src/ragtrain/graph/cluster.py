"""A node's job resources, in Snakemake's names, from its `resources` config.

The Slurm executor turns them into sbatch flags (`gpu` -> `--gpus`, `mem_mb` -> `--mem`,
`runtime` -> `-t`, ...); a local run counts `gpu` against `--resources gpu=N`. Each
stage has defaults (a training job asks for one GPU), and `mem_mb` / `runtime` grow
with each retry, since out-of-memory and time-limit kills are the usual failures.
"""

from __future__ import annotations

from typing import Any

# What a node's `resources` may set (the schema checks the same names).
RESOURCE_KEYS = (
    "gpu",
    "gpu_model",
    "cpus_per_gpu",
    "mem_mb",
    "runtime",
    "slurm_partition",
    "slurm_account",
    "nodes",
)
# Every key a rule declares: the node's own, plus those a multi-node job needs.
JOB_KEYS = (*RESOURCE_KEYS, "gres", "tasks", "tasks_per_gpu", "mpi")
GROWING = ("mem_mb", "runtime")

# Per stage: training and generation (vLLM, or a reward model's forward passes) run on
# a GPU; the rest on CPUs. mem_mb is host memory; runtime in minutes.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {"gpu": 1, "mem_mb": 32000, "runtime": 720},
    "generate": {"gpu": 1, "mem_mb": 32000, "runtime": 240},
    "cpu": {"mem_mb": 8000, "runtime": 120},
}


def _merged(given: dict | None, stage: str, defaults: dict | None) -> dict[str, Any]:
    """A node's `resources` over the config's stage defaults over ours."""
    return {**STAGE_DEFAULTS[stage], **(defaults or {}), **(given or {})}


def job_resources(
    given: dict | None, stage: str, attempt: int = 1, defaults: dict | None = None
) -> dict[str, Any]:
    """The job's resources: the node's `resources` over its stage's defaults (ours, under
    the config's top-level `resources.<stage>`), memory and time scaled by the attempt.
    Several nodes ask for GPUs per node (`gres`) and one srun task per node, which
    starts that node's processes (ragtrain.launch)."""
    out = _merged(given, stage, defaults)
    for key in GROWING:
        out[key] = out[key] * attempt
    nodes = out.get("nodes") or 1
    if nodes > 1:
        # `gpu=N` would be N GPUs for the whole job (sbatch --gpus), not per node.
        gpus = out.pop("gpu", None) or 1
        model = out.pop("gpu_model", None)
        out["gres"] = f"gpu:{model}:{gpus}" if model else f"gpu:{gpus}"
        out.update(tasks=nodes, tasks_per_gpu=0, mpi="srun")
    return {k: v for k, v in out.items() if v is not None}


def launch_args(
    given: dict | None, stage: str = "train", defaults: dict | None = None
) -> list[str]:
    """`ragtrain.launch` arguments: GPUs per node and nodes, as the job asked for them."""
    out = _merged(given, stage, defaults)
    return ["--gpus", str(out.get("gpu") or 0), "--nodes", str(out.get("nodes") or 1)]
