"""Reading Snakemake's dry-run output (tests, bench/dag_scale.py, scripts/slurm-test.sh)."""

from __future__ import annotations


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run: rule -> number of jobs."""
    table = dry_run_output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    jobs = {}
    for line in table.splitlines()[3:]:
        rule, count = line.split()
        if rule != "total":
            jobs[rule] = int(count)
    return jobs
