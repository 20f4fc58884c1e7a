"""The demo over several seeds, and the spread of its metrics (the README's demo table).

Runs `snakemake all` on config/config.yaml once per seed, each as its own run
(`results/demo-seed<S>/`), with the world's seed held at the demo's so that every run
is scored on the same questions: what varies is sampling, the judge's held-out split,
data order and adapter initialisation. Prints, per model, each metric's mean and
standard deviation over the runs, the per-run values, and the wall time of each run.

    python scripts/demo_spread.py --seeds 13 14 15 [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("em", "f1", "accuracy", "precision", "recall", "correct_refusal", "false_refusal")


def run(seed: int, world_seed: int, cores: str) -> tuple[str, float]:
    name = f"demo-seed{seed}"
    overlay = {"run": name, "seed": seed, "worlds": {"world": {"seed": world_seed}}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(overlay, f)
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "all", "--cores", cores,
         "--configfile", str(ROOT / "config/config.yaml"), f.name],
        cwd=ROOT, check=True,
    )  # fmt: skip
    return name, time.perf_counter() - began


def table(runs: list[str]) -> str:
    by_model: dict[str, list[dict]] = {}
    for name in runs:
        for path in sorted((ROOT / "results" / name / "eval").glob("*/*/*/metrics.json")):
            by_model.setdefault(path.parts[-4], []).append(json.loads(path.read_text()))
    head = "| model | " + " | ".join(METRICS) + " |"
    lines = [head, "|---" * (len(METRICS) + 1) + "|"]
    for model, rows in by_model.items():
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            each = ", ".join(f"{v:.3f}" for v in values)
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f} ({each})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 14, 15])
    parser.add_argument("--world-seed", type=int, default=13, help="the demo's world")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--report-only", action="store_true", help="tabulate finished runs")
    args = parser.parse_args()
    names = []
    for seed in args.seeds:
        if args.report_only:
            names.append(f"demo-seed{seed}")
            continue
        name, seconds = run(seed, args.world_seed, args.cores)
        names.append(name)
        print(f"{name}: {seconds / 60:.1f} min", flush=True)
    print(table(names))


if __name__ == "__main__":
    main()
