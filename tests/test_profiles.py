"""`snakemake --profile slurm -n all` and `snakemake --profile local -n all` exactly as
users type them, from the repository root: each name resolves to this checkout's
profiles/<name> (the link `make install` puts in Snakemake's user profile folder,
scripts/profiles.py), and the dry run of the demo prints its job table (no cluster is
needed for a dry run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragtrain.graph.dryrun import planned_jobs
from tests.conftest import ROOT

PROFILES = ["slurm", "local"]


def typed(*args: str) -> subprocess.CompletedProcess:
    """`snakemake <args>` run from the repository root, as a user types it (the venv's
    `snakemake` script), without a profile from $SNAKEMAKE_PROFILE."""
    script = Path(sys.executable).with_name("snakemake")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "snakemake"]
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    return subprocess.run(
        [*command, *args],
        cwd=ROOT,
        env={**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )


def resolved(name: str, monkeypatch) -> Path | None:
    """The folder Snakemake's own lookup finds for `--profile <name>` from the root."""
    from snakemake.cli import get_profile_dir

    monkeypatch.chdir(ROOT)
    found = get_profile_dir(name)
    return found[0].resolve() if found else None


@pytest.mark.parametrize("name", PROFILES)
def test_profile_name_resolves_to_this_checkout(name, monkeypatch):
    found = resolved(name, monkeypatch)
    if found != (ROOT / "profiles" / name).resolve():
        from snakemake.common import get_appdirs

        pytest.fail(
            f"`snakemake --profile {name}` from the repository root finds "
            f"{found or 'no profile'}, not {ROOT / 'profiles' / name}: `make install` (or "
            f"`make profiles`) links it as {Path(get_appdirs().user_config_dir) / name}; "
            "`python scripts/profiles.py status` says where it resolves"
        )


@pytest.mark.parametrize("name", PROFILES)
def test_dry_run_of_the_demo_as_typed(name, monkeypatch):
    if resolved(name, monkeypatch) != (ROOT / "profiles" / name).resolve():
        pytest.fail(f"--profile {name} is not this checkout's: see the test above")
    proc = typed("--profile", name, "-n", "all")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Using profile {name} for setting default command line arguments" in proc.stderr
    if "Nothing to be done" in proc.stdout + proc.stderr:
        return  # the demo already ran in this checkout: nothing to plan
    jobs = planned_jobs(proc.stdout)
    assert jobs["all"] == 1 and jobs["report"] == 1 and jobs["train"] >= 1
    if name == "slurm":
        # The profile's default-resources, for rules without a config node.
        report = proc.stdout.split("rule report:", 1)[1].split("\n\n", 1)[0]
        assert "mem_mb=8000," in report and "runtime=120" in report, report
