"""The rule graph of each config as pictures (`make dag`): for config/<name>.yaml,
docs/dag/<name>.dot (`snakemake --rulegraph`, its nodes named by rule and sorted, so the
file changes only when the graph does), then <name>.svg and <name>.png drawn from it by
Graphviz's `dot` (Debian: `apt-get install graphviz`). tests/test_rulegraph.py fails
when a committed graph's rules or edges differ from the workflow's.

    python scripts/rulegraph.py config/*.yaml            # into docs/dag/
    python scripts/rulegraph.py --out DIR config/rl.yaml
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE = re.compile(r'^\s*(\d+)\[label = "([^"]+)"(.*)\];\s*$')
EDGE = re.compile(r"^\s*(\d+) -> (\d+)\s*$")


def rulegraph(configfile: Path) -> str:
    """`snakemake --rulegraph` of a config, run from the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--rulegraph", "--configfile", str(configfile)],
        cwd=ROOT,
        env={**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(
            f"rulegraph: snakemake --rulegraph --configfile {configfile} failed:\n{proc.stderr}"
        )
    return proc.stdout


def normalize(raw: str, source: str) -> str:
    """Snakemake's rule graph with each node named by its rule, nodes and edges sorted."""
    header, nodes, edges = [], {}, set()
    for line in raw.splitlines():
        if node := NODE.match(line):
            nodes[node[1]] = (node[2], node[3])
        elif edge := EDGE.match(line):
            edges.add((edge[1], edge[2]))
        elif not nodes and line.strip() and not line.strip().startswith("}"):
            header.append(" ".join(line.split()).replace("[ ", "["))
    if not nodes:
        sys.exit(f"rulegraph: no rule in the graph of {source}:\n{raw}")
    names = {number: label for number, (label, _) in nodes.items()}
    lines = [header[0], *("    " + line for line in header[1:])]
    lines.append(f"    // {source}: `make dag` (scripts/rulegraph.py) from snakemake --rulegraph")
    for label, attributes in sorted(nodes.values()):
        lines.append(f'    "{label}"[label = "{label}"{attributes}];')
    for src, dst in sorted((names[a], names[b]) for a, b in edges):
        lines.append(f'    "{src}" -> "{dst}"')
    return "\n".join([*lines, "}", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dag")
    args = parser.parse_args(argv)
    dot = shutil.which("dot")
    if dot is None:
        sys.exit("rulegraph: Graphviz's `dot` not found (Debian: apt-get install graphviz)")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    for configfile in args.configs:
        configfile = configfile.resolve()
        source = configfile.relative_to(ROOT) if configfile.is_relative_to(ROOT) else configfile
        stem = args.out / configfile.stem
        graph = normalize(rulegraph(configfile), str(source))
        stem.with_suffix(".dot").write_text(graph)
        for fmt in ("svg", "png"):
            subprocess.run(
                [
                    dot,
                    f"-T{fmt}",
                    str(stem.with_suffix(".dot")),
                    "-o",
                    str(stem.with_suffix(f".{fmt}")),
                ],
                check=True,
            )
        shown = stem.relative_to(Path.cwd()) if stem.is_relative_to(Path.cwd()) else stem
        print(f"rulegraph: {source} -> {shown}.dot, .svg, .png ({graph.count('[label')} rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
