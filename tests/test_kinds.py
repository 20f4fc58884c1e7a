"""The kind registry is the one place a kind is declared: the schema, the docs, the rules
and the stages agree with it."""

import re
import subprocess
import sys

import pytest
import yaml

from ragtrain.__main__ import build_parser
from ragtrain.graph.kinds import KINDS, kinds_of
from tests.conftest import ROOT

SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
NODE_SECTIONS = ("worlds", "corpora", "retrievers", "datasets", "models", "products", "judges")


def _node_schema(section):
    return SCHEMA["properties"][section]["additionalProperties"]["properties"]


@pytest.mark.parametrize("section", NODE_SECTIONS)
def test_the_schema_types_exactly_the_keys_the_kinds_take(section):
    taken = set().union(*(kind.keys for kind in kinds_of(section).values()))
    assert set(_node_schema(section)) == taken


@pytest.mark.parametrize("section", ["retrievers", "datasets", "models", "products", "judges"])
def test_the_schema_lists_exactly_the_registered_kinds(section):
    registered = {name.split(".")[0] for name in kinds_of(section)}
    assert set(_node_schema(section)["kind"]["enum"]) == registered


@pytest.mark.parametrize("kind", KINDS.values(), ids=lambda k: f"{k.section}.{k.name}")
def test_every_key_of_a_kind_is_documented(kind):
    undocumented = kind.keys - set(kind.docs) - {"kind", "resources"}
    assert not undocumented, f"{kind.title}: no docs for {sorted(undocumented)}"


def test_every_kind_has_a_rule_and_a_stage():
    rules = set()
    for path in (ROOT / "workflow/rules").glob("*.smk"):
        text = path.read_text()
        rules |= set(re.findall(r"^rule (\w+):", text, re.M))
        rules |= set(re.findall(r"^use rule \w+ as (\w+)", text, re.M))
    stages = set(build_parser()._subparsers._group_actions[0].choices)
    for kind in KINDS.values():
        if kind.section == "judges" and kind.rule is None:
            continue  # run inside the stages that name them (no job of their own)
        assert kind.rule in rules, f"{kind.title}: no rule {kind.rule}"
        assert kind.stage in stages, f"{kind.title}: no stage {kind.stage}"


def test_the_committed_key_tables_are_the_registry_s():
    done = subprocess.run(
        [sys.executable, "-m", "ragtrain.graph.docs", "--check", "config/README.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
