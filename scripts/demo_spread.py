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
JUDGED_METRICS = (
    "precision", "recall", "refusal_rate", "false_refusal", "agreement_label",
    "agreement_relevance",
)  # fmt: skip


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


def table(runs: list[str], judged: bool = False) -> str:
    """Mean ± sd (each run's value) per model; `judged`: from the model judges' verdicts."""
    pattern = "*/*/*/judged/metrics.json" if judged else "*/*/*/metrics.json"
    metrics = JUDGED_METRICS if judged else METRICS
    by_model: dict[str, list[dict]] = {}
    for name in runs:
        for path in sorted((ROOT / "results" / name / "eval").glob(pattern)):
            metric = json.loads(path.read_text())
            flat = {
                **metric,
                **{f"agreement_{k}": v for k, v in metric.get("agreement_with_rules", {}).items()},
            }
            by_model.setdefault(metric["model"], []).append(flat)
    head = "| model | " + " | ".join(metrics) + " |"
    lines = [head, "|---" * (len(metrics) + 1) + "|"]
    for model, rows in by_model.items():
        cells = []
        for metric in metrics:
            values = [r[metric] for r in rows if r.get(metric) is not None]
            if not values:
                cells.append("-")
                continue
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
    print("\nFrom SmolLM2's label and relevance verdicts (the model judges):\n")
    print(table(names, judged=True))
    print("\nSmolLM2 labelling the self-demos (products/judged_by_smol):\n")
    for name in names:
        stats = ROOT / "results" / name / "products" / "judged_by_smol" / "stats.json"
        if stats.exists():
            s = json.loads(stats.read_text())
            print(f"{name}: {s['rules']}, replies {s['replies']}, labels {s['labels']}")


if __name__ == "__main__":
    main()
