"""The contract between the rules and the stages: every command a dry run plans parses.

Each config under config/ and tests/*.yaml is dry-run (`snakemake -n -p`); every shell
command it would run that starts a stage (`python -m ragtrain <stage> ...`, or through
`python -m ragtrain.launch ... -- <stage> ...`) is parsed by the stages' own parser. An
option a rule passes that the stage does not declare, a required one it leaves out, or
`--params` that is not a JSON object fails here, before any job runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from ragtrain.__main__ import build_parser
from tests.conftest import ROOT, snakemake

# (config/paper/ configs name data files a dry run needs: their own tests dry-run them.)
CONFIGS = sorted((ROOT / "config").glob("*.yaml")) + sorted((ROOT / "tests").glob("*.yaml"))

# A dry run's planned shell commands, each on one line (`-p`).
SHELL_COMMAND = re.compile(r"^Shell command: (.+)$", re.MULTILINE)


def _name(configfile: Path) -> str:
    return str(configfile.relative_to(ROOT))


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """configfile -> the shell commands its dry run plans (each config dry-run once)."""
    cache: dict[Path, list[str]] = {}

    def commands(configfile: Path) -> list[str]:
        if configfile not in cache:
            folder = tmp_path_factory.mktemp(configfile.stem)
            proc = snakemake(
                "-n", "-p", "--configfile", str(configfile), "--directory", str(folder)
            )
            cache[configfile] = SHELL_COMMAND.findall(proc.stdout + proc.stderr)
        return cache[configfile]

    return commands


def stage_argv(command: str) -> list[str] | None:
    """The stage's arguments (`<stage> --opt ...`) of a planned command, without what a
    shell adds around it (a prefix up to `python`, the `> log 2>&1` redirection); None
    for a command that starts no stage."""
    words = shlex.split(command)
    if ">" in words:  # only a redirection is its own word: quoted values stay whole
        words = words[: words.index(">")]
    for i in range(len(words) - 2):
        if Path(words[i]).name.startswith("python") and words[i + 1] == "-m":
            if words[i + 2] == "ragtrain":
                return words[i + 3 :]
            if words[i + 2] == "ragtrain.launch":
                rest = words[i + 3 :]
                assert "--" in rest, f"ragtrain.launch without `-- <stage>`: {command}"
                return rest[rest.index("--") + 1 :]
    return None


def strict_parser() -> argparse.ArgumentParser:
    """The stages' parser, with no abbreviated option taken for a full one: a rule that
    writes `--stat` for `--stats` fails the contract."""
    parser = build_parser()
    parser.allow_abbrev = False
    for stage in stage_parsers(parser).values():
        stage.allow_abbrev = False
    return parser


def stage_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (stages,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(stages.choices)


def parse(argv: list[str]) -> argparse.Namespace:
    """argparse's verdict on a stage's arguments; its error (it exits) as a ValueError."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return strict_parser().parse_args(argv)
    except SystemExit as e:
        raise ValueError(stderr.getvalue().strip() or f"exit {e.code}") from None


@pytest.mark.parametrize("configfile", CONFIGS, ids=_name)
def test_every_planned_stage_command_parses(configfile, planned):
    commands = [c for c in planned(configfile) if stage_argv(c) is not None]
    assert commands, f"{_name(configfile)}: the dry run plans no stage"
    for command in commands:
        try:
            args = parse(stage_argv(command))
        except ValueError as e:
            pytest.fail(
                f"{_name(configfile)}: the stage refuses a planned command:\n{command}\n{e}"
            )
        assert callable(args.func)


def test_the_configs_use_only_stages_the_parser_knows(planned):
    used = {stage_argv(c)[0] for f in CONFIGS for c in planned(f) if stage_argv(c) is not None}
    known = set(stage_parsers(build_parser()))
    assert used <= known, f"stages no parser declares: {sorted(used - known)}"
    # The demo and test configs between them reach most stages (a sanity check on the
    # extraction above: a pattern that found nothing would pass the subset vacuously).
    assert len(used) >= 20, sorted(used)


def without(argv: list[str], option: str) -> list[str]:
    """`argv` without `option` and its value."""
    i = argv.index(option)
    return argv[:i] + argv[i + 2 :]


def test_a_broken_command_fails_the_parse(planned):
    configfile = ROOT / "tests" / "tiny.yaml"
    command = next(c for c in planned(configfile) if "-m ragtrain sft-data" in c)
    argv = stage_argv(command)
    assert argv[0] == "sft-data"
    parse(argv)  # as planned, it parses
    for broken in (
        [*argv, "--no-such-option", "x"],  # an option the stage does not declare
        ["sft-datum", *argv[1:]],  # a stage that does not exist
        without(argv, "--stats"),  # a required option left out
        [*without(argv, "--params"), "--params", "[1, 2]"],  # --params not a JSON object
        [a.replace("--stats", "--stat") for a in argv],  # an abbreviation
    ):
        with pytest.raises(ValueError):
            parse(broken)


def test_stage_argv_strips_the_shell_around_the_stage():
    planned = (
        "set -euo pipefail;  python -m ragtrain.launch --gpus 1 --nodes 1 -- train"
        ' --params \'{"note": "a > b"}\' --init m > logs/x.log 2>&1'
    )
    assert stage_argv(planned) == ["train", "--params", '{"note": "a > b"}', "--init", "m"]
    assert stage_argv("python -m ragtrain report --run r > log 2>&1") == [
        "report",
        "--run",
        "r",
    ]
    assert stage_argv("echo done") is None
