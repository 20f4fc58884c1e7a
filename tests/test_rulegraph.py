"""The committed rule-graph pictures (docs/dag/, `make dag`) are the workflow's: for each
config/<name>.yaml, the rules and edges of docs/dag/<name>.dot equal those of
`snakemake --rulegraph`, and <name>.svg and <name>.png were drawn from that .dot. No
Graphviz needed: the SVG is read as XML, the PNG's size checked against the SVG's."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import ROOT, snakemake

CONFIGS = sorted((ROOT / "config").glob("*.yaml"))
DAG = ROOT / "docs" / "dag"
SVG = "{http://www.w3.org/2000/svg}"

Graph = tuple[set[str], set[tuple[str, str]]]


def snakemake_graph(dot: str) -> Graph:
    """Rules and edges of Snakemake's --rulegraph output (nodes numbered, labelled)."""
    labels = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, re.M))
    edges = re.findall(r"^\s*(\d+) -> (\d+)\s*$", dot, re.M)
    return set(labels.values()), {(labels[a], labels[b]) for a, b in edges}


def committed_graph(dot: str) -> Graph:
    """Rules and edges of a docs/dag/*.dot (nodes named by rule)."""
    nodes = set(re.findall(r'^\s*"([^"]+)"\[label', dot, re.M))
    edges = set(re.findall(r'^\s*"([^"]+)" -> "([^"]+)"\s*$', dot, re.M))
    return nodes, edges


def svg_graph(svg: Path) -> Graph:
    """Nodes and edges of a Graphviz SVG: each one's <title> is its name, or `a->b`."""
    nodes, edges = set(), set()
    for group in ET.parse(svg).getroot().iter(f"{SVG}g"):
        title = group.findtext(f"{SVG}title")
        if group.get("class") == "node":
            nodes.add(title)
        elif group.get("class") == "edge":
            src, dst = title.split("->")
            edges.add((src, dst))
    return nodes, edges


def differences(what: str, committed: Graph, workflow: Graph) -> str:
    lines = []
    for kind, old, new in zip(("rules", "edges"), committed, workflow, strict=True):
        if new - old:
            lines.append(f"{kind} the workflow has and {what} lacks: {sorted(new - old)}")
        if old - new:
            lines.append(f"{kind} {what} has and the workflow lacks: {sorted(old - new)}")
    return "\n".join(lines)


def test_every_config_has_its_pictures():
    configs = {c.stem for c in CONFIGS}
    for suffix in ("dot", "svg", "png"):
        drawn = {p.stem for p in DAG.glob(f"*.{suffix}")}
        assert drawn == configs, (
            f"docs/dag/*.{suffix} for {sorted(drawn)}, configs {sorted(configs)}: run `make dag`"
        )


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda p: p.stem)
def test_committed_rule_graph_is_the_workflows(configfile):
    committed = committed_graph((DAG / f"{configfile.stem}.dot").read_text())
    proc = snakemake("--rulegraph", "--configfile", str(configfile))
    workflow = snakemake_graph(proc.stdout)
    assert workflow[0], proc.stdout
    assert committed == workflow, (
        f"docs/dag/{configfile.stem}.dot is stale (run `make dag`):\n"
        + differences(f"docs/dag/{configfile.stem}.dot", committed, workflow)
    )


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda p: p.stem)
def test_pictures_are_drawn_from_the_committed_graph(configfile):
    stem = DAG / configfile.stem
    name = f"docs/dag/{configfile.stem}"
    committed = committed_graph(stem.with_suffix(".dot").read_text())
    drawn = svg_graph(stem.with_suffix(".svg"))
    assert drawn == committed, f"{name}.svg is not drawn from {name}.dot: run `make dag`"
    # dot draws the PNG at 96 dpi from the same layout: its size is the SVG's in points x 4/3.
    root = ET.parse(stem.with_suffix(".svg")).getroot()
    points = [float(root.get(side).removesuffix("pt")) for side in ("width", "height")]
    header = stem.with_suffix(".png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{name}.png is not a PNG"
    pixels = struct.unpack(">II", header[16:24])
    for pt, px in zip(points, pixels, strict=True):
        assert abs(pt * 4 / 3 - px) <= 2, f"{name}.png ({pixels}) is not {name}.svg ({points} pt)"


def test_readme_shows_every_rule_graph():
    readme = (ROOT / "README.md").read_text()
    missing = [c.stem for c in CONFIGS if f"docs/dag/{c.stem}.svg" not in readme]
    assert not missing, f"README.md shows no rule graph for {missing} (docs/dag/<config>.svg)"
