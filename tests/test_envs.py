"""The per-rule conda envs: parsed and checked here (conda cannot run on these machines)."""

import re

import pytest
import yaml

from tests.conftest import ROOT

ENVS = sorted((ROOT / "envs").glob("*.yaml"))
RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))


def packages(env: dict) -> list[str]:
    out = []
    for dep in env["dependencies"]:
        out.extend(dep["pip"] if isinstance(dep, dict) else [dep])
    return out


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_is_pinned_on_conda_forge(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    for spec in packages(env):
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==?[0-9][A-Za-z0-9_.+\-]*", spec), (
            f"{path.name}: {spec!r} is not pinned"
        )


def test_every_rule_names_an_existing_env():
    for smk in RULE_FILES:
        text = smk.read_text()
        # A `use rule ... with:` here always names its own env (ColBERT's pins).
        n_rules = len(re.findall(r"^(?:rule \w+:|use rule .* with:)", text, flags=re.M))
        envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', text)
        assert len(envs) == n_rules, f"{smk.name}: every rule needs a conda env"
        for env in envs:
            assert (smk.parent / env).resolve() in [p.resolve() for p in ENVS], env
