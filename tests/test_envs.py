"""The per-rule conda envs: parsed and checked here (conda cannot run on these machines)."""

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

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
        # One block per rule: `rule X:` names its env; `use rule X as Y with:` inherits
        # X's unless it names its own (ColBERT's pins).
        blocks = re.split(r"^(?=rule \w+:|use rule )", smk.read_text(), flags=re.M)[1:]
        for block in blocks:
            envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', block)
            if block.startswith("rule "):
                assert len(envs) == 1, f"{smk.name}: {block.splitlines()[0]} needs a conda env"
            for env in envs:
                assert (smk.parent / env).resolve() in [p.resolve() for p in ENVS], env


def _pyproject_ranges() -> dict[str, SpecifierSet]:
    """Every requirement of pyproject.toml (extras included), by normalised name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs.extend(extra)
    return {canonicalize_name(r.name): r.specifier for r in map(Requirement, reqs)}


def _pins(env: dict) -> dict[str, str]:
    pins = {}
    for spec in packages(env):
        name, version = re.split(r"==?", spec, maxsplit=1)
        pins[canonicalize_name(re.sub(r"\[.*\]", "", name))] = version
    return pins


# The env toolchain itself, not ragtrain's dependencies.
TOOLCHAIN = {"python", "pip"}
# Packages an env adds beyond pyproject.toml, and why.
EXTRA_IN_ENVS = {
    "pylate": "installed with --no-deps (its pins clash with vLLM's), see the Makefile",
    "fast-plaid": "PyLate's PLAID index, only in the ColBERT env",
}
# Pins outside pyproject.toml's ranges, and why (the issue allows it where vLLM or
# PyLate require it).
OUTSIDE_RANGE = {
    ("colbert.yaml", "torch"): "fast-plaid (PyLate) pins torch 2.11",
    ("colbert.yaml", "transformers"): "pylate 1.6.0 pins transformers <= 5.3",
}


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_packages_agree_with_pyproject(path):
    ranges = _pyproject_ranges()
    for name, version in _pins(yaml.safe_load(path.read_text())).items():
        if name in TOOLCHAIN or name in EXTRA_IN_ENVS:
            continue
        assert name in ranges, f"{path.name}: {name} is not a dependency in pyproject.toml"
        if (path.name, name) in OUTSIDE_RANGE:
            assert version not in ranges[name], f"{path.name}: {name} needs no exception now"
            continue
        assert version in ranges[name], (
            f"{path.name}: {name}=={version} is outside pyproject.toml's {ranges[name]}"
        )


def test_envs_pin_a_package_to_one_version():
    seen: dict[str, tuple[str, str]] = {}
    for path in ENVS:
        for name, version in _pins(yaml.safe_load(path.read_text())).items():
            if (path.name, name) in OUTSIDE_RANGE:
                continue
            first = seen.setdefault(name, (path.name, version))
            assert first[1] == version, (
                f"{name}: {first[1]} in {first[0]}, {version} in {path.name}"
            )


def test_every_pyproject_dependency_a_rule_imports_is_in_its_env():
    # Each stage's imports, by the env its rules name.
    needed = {
        "train.yaml": {"torch", "transformers", "peft", "trl", "accelerate", "deepspeed"},
        "generate.yaml": {"vllm", "transformers"},
        "data.yaml": {"torch", "faiss-cpu", "sentence-transformers", "bm25s"},
        "evaluate.yaml": {"matplotlib"},
    }
    for env, names in needed.items():
        pins = _pins(yaml.safe_load((ROOT / "envs" / env).read_text()))
        assert names <= set(pins), f"{env}: missing {sorted(names - set(pins))}"
