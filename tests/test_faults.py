"""Resume and faults: stages killed with SIGKILL and rerun through Snakemake resume from
their shards and checkpoints; a changed config or input does not resume stale state; a
failed or killed job leaves nothing at its declared outputs (DESIGN.md, principle 6).

The end-to-end tests start from one prepared folder (world, index, retrieved training
questions, the tiny base model), copied per test with its Snakemake metadata.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import ROOT

# Every test runs a child process: Snakemake (the e2e ones) or a writer killed mid-write.
pytestmark = pytest.mark.slow

RESULTS = Path("results/tiny")
EXAMPLES = RESULTS / "data/train/examples.jsonl"
DEMOS = RESULTS / "products/demos"
SFT = RESULTS / "models/sft"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# --------------------------------------------------------------------------- helpers


def base_config(tiny_model: Path) -> dict:
    """tests/tiny.yaml on the HF backend (no vLLM start-up), self-demos without retrieval
    (no index to build), training logging every step."""
    cfg = yaml.safe_load((ROOT / "tests" / "tiny.yaml").read_text())
    cfg["models"]["base"]["path"] = str(tiny_model)
    cfg["generation"]["backend"] = "hf"
    cfg["products"]["demos"]["retrieval"] = "none"
    cfg["worlds"]["world"]["questions"]["train"] = 8
    cfg["models"]["sft"].update(logging_steps=1)
    return cfg


def write_config(folder: Path, cfg: dict) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake_cmd(folder: Path, configfile: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--cores",
        "2",
        "--configfile",
        str(configfile),
        "--directory",
        str(folder),
        *args,
    ]


def snakemake(folder: Path, configfile: Path, *args: str, check: bool = True):
    proc = subprocess.run(
        snakemake_cmd(folder, configfile, *args),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}"
        )
    return proc


def rerun(folder: Path, configfile: Path, *targets: str, unlock: bool = False):
    """What a user does after a crash: unlock the folder, rerun the incomplete jobs."""
    if unlock:
        snakemake(folder, configfile, "--unlock")
    return snakemake(folder, configfile, "--rerun-incomplete", *targets)


def kill_when(folder: Path, configfile: Path, target: str, ready, what: str) -> None:
    """Run Snakemake on `target` in its own session; SIGKILL the session (Snakemake and
    its jobs, no clean-up) as soon as `ready()`."""
    log = (folder / "killed-run.log").open("w")
    proc = subprocess.Popen(
        snakemake_cmd(folder, configfile, target),
        cwd=ROOT,
        env=ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(
                    f"snakemake ended (status {proc.returncode}) before {what}:\n"
                    + (folder / "killed-run.log").read_text()[-3000:]
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within 300 s")
            time.sleep(0.02)
    finally:
        kill_session(proc)
        log.close()


def kill_session(proc: subprocess.Popen) -> None:
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in family:  # anything that left the session
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(family, timeout=30)
    proc.wait()


def snapshot(files) -> dict[str, tuple[bytes, int]]:
    return {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def work_folders(folder: Path, section: str, node: str) -> list[Path]:
    return sorted((folder / RESULTS / "work" / section / node).glob("*"))


def log_of(folder: Path, kind: str, name: str) -> str:
    return (folder / "logs/tiny" / kind / f"{name}.log").read_text()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prepared(tiny_model, tmp_path_factory) -> Path:
    """The inputs of the self-demos node, built once: copied by `workspace`."""
    folder = tmp_path_factory.mktemp("prepared")
    configfile = write_config(folder, base_config(tiny_model))
    snakemake(folder, configfile, str(EXAMPLES), str(RESULTS / "models/base"))
    return folder


@pytest.fixture
def workspace(prepared, tmp_path) -> Path:
    # copytree keeps modification times: Snakemake sees the copied outputs up to date.
    folder = tmp_path / "ws"
    shutil.copytree(prepared, folder, symlinks=True)
    return folder


# --------------------------------------------------------------------------- generation


@pytest.mark.e2e
def test_killed_generation_resumes_from_its_shards(workspace, tiny_model):
    # One question per shard: eight shards, a few tenths of a second each.
    cfg = base_config(tiny_model)
    cfg["products"]["demos"].update(shard_size=1, generation={"temperature": 1.0})
    cfg["generation"]["max_new_tokens"] = 16
    configfile = write_config(workspace, cfg)
    target = str(DEMOS / "data.jsonl")
    examples = [json.loads(line) for line in (workspace / EXAMPLES).open()]
    n_shards = len(examples)

    def shards() -> list[Path]:
        return sorted((workspace / RESULTS / "work/products/demos").glob("*/shard-*.jsonl"))

    kill_when(workspace, configfile, target, lambda: len(shards()) >= 2, "two shards were written")
    # Nothing at the declared outputs; the finished shards are kept.
    assert not (workspace / DEMOS / "data.jsonl").exists()
    assert not (workspace / DEMOS / "stats.json").exists()
    [stale] = work_folders(workspace, "products", "demos")
    done = snapshot(shards())
    assert 2 <= len(done) < n_shards

    # A changed sampling setting is another node state: a new work folder, from scratch;
    # the killed run's shards are neither used nor touched.
    cfg["products"]["demos"]["generation"]["temperature"] = 0.7
    write_config(workspace, cfg)
    rerun(workspace, configfile, target, unlock=True)
    stats = json.loads((workspace / DEMOS / "stats.json").read_text())
    assert stats["shards"] == n_shards and stats["resumed_shards"] == 0
    assert "resuming" not in log_of(workspace, "products", "demos")
    assert work_folders(workspace, "products", "demos") == [stale]  # the new one is done
    assert snapshot(shards()) == done

    # Back to the killed run's settings: its shards are resumed, the rest generated.
    cfg["products"]["demos"]["generation"]["temperature"] = 1.0
    write_config(workspace, cfg)
    proc = rerun(workspace, configfile, target)
    assert "self_demos" in proc.stdout + proc.stderr
    assert f"work folder {stale.relative_to(workspace)}: resuming" in log_of(
        workspace, "products", "demos"
    )
    stats = json.loads((workspace / DEMOS / "stats.json").read_text())
    assert stats["shards"] == n_shards and stats["resumed_shards"] == len(done)
    assert stats["n_examples"] == len(examples) and stats["n_samples"] == 2 * len(examples)

    records = [json.loads(line) for line in (workspace / DEMOS / "data.jsonl").open()]
    # Every question once, in order, each with its two samples: none lost or duplicated.
    assert [r["id"] for r in records] == [ex["id"] for ex in examples]
    assert all(len(r["samples"]) == 2 for r in records)
    # The shards finished before the kill are in the output as they were written.
    for name, (content, _) in done.items():
        index = int(name.removeprefix("shard-").removesuffix(".jsonl"))
        assert [json.loads(line) for line in content.decode().splitlines()] == [records[index]]
    assert not work_folders(workspace, "products", "demos")  # dropped once complete


# --------------------------------------------------------------------------- training


def checkpoint_step(folder: Path) -> int | None:
    """The newest complete checkpoint's step (one cut short has no trainer state)."""
    steps = [
        int(c.name.split("-")[1])
        for c in folder.glob("*/checkpoints/checkpoint-*")
        if (c / "trainer_state.json").is_file()
    ]
    return max(steps, default=None)


@pytest.mark.e2e
def test_killed_training_resumes_from_its_checkpoint(workspace, tiny_model):
    cfg = base_config(tiny_model)
    # Six or seven training questions, batches of four: two steps an epoch, six in all.
    cfg["models"]["sft"].update(batch_size=4, epochs=3, save_steps=2, learning_rate=1e-3)
    configfile = write_config(workspace, cfg)
    work = workspace / RESULTS / "work/models/sft"

    kill_when(
        workspace,
        configfile,
        str(SFT),
        lambda: checkpoint_step(work) is not None,
        "a checkpoint was saved",
    )
    assert not (workspace / SFT).exists()
    [stale] = work_folders(workspace, "models", "sft")
    step = checkpoint_step(work)
    kept = snapshot(p for p in stale.rglob("*") if p.is_file())

    # Another learning rate: trained from step 1 in a new work folder; the killed run's
    # checkpoint is neither used nor touched.
    cfg["models"]["sft"]["learning_rate"] = 5e-4
    write_config(workspace, cfg)
    rerun(workspace, configfile, str(SFT), unlock=True)
    log = log_of(workspace, "models", "sft")
    total = json.loads((workspace / SFT / "metrics.json").read_text())["steps"]
    assert step < total
    assert "resuming from" not in log
    assert f"trained steps 1 to {total} of {total}" in log
    assert work_folders(workspace, "models", "sft") == [stale]
    assert snapshot(p for p in stale.rglob("*") if p.is_file()) == kept

    # The killed run's settings again: it goes on from its checkpoint, step, optimizer
    # and learning-rate schedule included, and trains the steps after it only.
    cfg["models"]["sft"]["learning_rate"] = 1e-3
    write_config(workspace, cfg)
    rerun(workspace, configfile, str(SFT))
    log = log_of(workspace, "models", "sft")
    assert f"resuming from {stale.relative_to(workspace)}/checkpoints/checkpoint-{step}" in log
    assert f"trained steps {step + 1} to {total} of {total}" in log
    state = json.loads((workspace / SFT / "trainer_state.json").read_text())
    assert state["global_step"] == total
    losses = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in losses] == list(range(1, total + 1))
    # Linear decay from 1e-3 over the whole run, continued across the kill (a scheduler
    # started afresh would be back near 1e-3 at step `step + 1`).
    for h in losses:
        assert h["learning_rate"] == pytest.approx(1e-3 * (total - h["step"] + 1) / total, rel=0.01)
    metrics = json.loads((workspace / SFT / "metrics.json").read_text())
    assert metrics["steps"] == total
    assert not work_folders(workspace, "models", "sft")


# --------------------------------------------------------------------------- failures


@pytest.mark.e2e
def test_failed_generation_leaves_no_output_and_keeps_its_shards(workspace, tiny_model):
    cfg = base_config(tiny_model)
    cfg["products"]["demos"].update(shard_size=1)
    configfile = write_config(workspace, cfg)
    target = str(DEMOS / "data.jsonl")
    # The fifth training question lost its text: the prompt cannot be rendered, late.
    path = workspace / EXAMPLES
    original = path.read_text()
    lines = original.splitlines()
    bad = json.loads(lines[4])
    del bad["question"]
    lines[4] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")

    proc = snakemake(workspace, configfile, target, check=False)
    assert proc.returncode != 0
    assert "Error in rule self_demos" in proc.stdout + proc.stderr
    log = log_of(workspace, "products", "demos")
    assert f"record {bad['id']!r}: 'question' is undefined" in log
    assert "Traceback" not in log  # one line that says what is wrong
    # No declared output, not even a partial one; the four good shards are kept.
    assert not list((workspace / DEMOS).glob("[!.]*"))
    [state] = work_folders(workspace, "products", "demos")
    assert sorted(p.name for p in state.glob("shard-*")) == [
        f"shard-{i:05d}.jsonl" for i in range(4)
    ]

    # The input fixed: it changed since the shards were made, so they are not resumed.
    path.write_text(original)
    snakemake(workspace, configfile, target)
    assert f"work folder {state.relative_to(workspace)}: inputs changed" in log_of(
        workspace, "products", "demos"
    )
    stats = json.loads((workspace / DEMOS / "stats.json").read_text())
    assert stats["resumed_shards"] == 0 and stats["n_examples"] == len(lines)


# --------------------------------------------------------------------------- writers


def run_until_signalled(tmp_path: Path, script: str) -> None:
    """Run `script` (given `ready`, a file to create when it is where it should be
    killed) in a child process; SIGKILL it there."""
    ready = tmp_path / "ready"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**ENV, "READY": str(ready)},
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert child.poll() is None, "the child ended before it could be killed"
        assert time.monotonic() < deadline, "the child did not get there within 60 s"
        time.sleep(0.01)
    child.kill()
    child.wait()


PAUSE = """
import os, time
from pathlib import Path
def pause():
    Path(os.environ["READY"]).touch()
    time.sleep(60)
"""


def test_killed_while_writing_records_leaves_no_file(tmp_path):
    out = tmp_path / "out" / "data.jsonl"
    script = (
        PAUSE
        + f"""
from ragtrain.core.records import write_jsonl
def records():
    for i in range(3):
        yield {{"id": i}}
    pause()
write_jsonl({str(out)!r}, records())
"""
    )
    run_until_signalled(tmp_path, script)
    # Only the hidden temporary sibling is left, nothing at the declared path.
    assert not out.exists()
    assert all(p.name.startswith(".data.jsonl.") for p in out.parent.iterdir())


def test_killed_while_writing_a_folder_leaves_none(tmp_path):
    out = tmp_path / "model"
    script = (
        PAUSE
        + f"""
from ragtrain.core.records import atomic_dir
with atomic_dir({str(out)!r}) as tmp:
    (tmp / "config.json").write_text("{{}}")
    pause()
"""
    )
    run_until_signalled(tmp_path, script)
    assert not out.exists()


def test_killed_while_replacing_a_folder_leaves_the_new_one_whole(tmp_path):
    """A kill while the previous folder is deleted leaves the new folder, complete, at
    the path, not part of the old one."""
    out = tmp_path / "index"
    out.mkdir()
    for name in ("a", "b", "c"):
        (out / name).write_text("old")
    script = (
        PAUSE
        + f"""
import shutil
from ragtrain.core import records
written = False
def rmtree(path, ignore_errors=False):
    # Deleting the previous folder: half of it, then the kill.
    if written and Path(path).exists():
        sorted(Path(path).iterdir())[0].unlink()
        pause()
    shutil.rmtree(path, ignore_errors=ignore_errors)
records.shutil = type("shutil", (), {{"rmtree": staticmethod(rmtree)}})
with records.atomic_dir({str(out)!r}) as tmp:
    for name in ("x", "y"):
        (tmp / name).write_text("new")
    written = True
"""
    )
    run_until_signalled(tmp_path, script)
    assert sorted(p.name for p in out.iterdir()) == ["x", "y"]
    assert all(p.read_text() == "new" for p in out.iterdir())
    # A later write clears what the killed one left beside it.
    from ragtrain.core.records import atomic_dir

    with atomic_dir(out) as tmp:
        (tmp / "z").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "ready") == ["index"]
    assert [p.name for p in out.iterdir()] == ["z"]


# --------------------------------------------------------------------------- orphans


@pytest.mark.e2e
def test_a_killed_snakemake_leaves_no_stage_running(tmp_path):
    """SIGKILL to Snakemake alone (not its process group): the job it started, a dataset
    stage blocked reading a named pipe that nothing ever writes, ends with it instead of
    living on under init (ragtrain.launch.die_with_scheduler)."""
    os.mkfifo(tmp_path / "questions.jsonl")
    (tmp_path / "model").mkdir()
    cfg = {
        "run": "orphan",
        "models": {"base": {"path": "model"}},
        "datasets": {"qa": {"path": "questions.jsonl", "format": "nq_open"}},
    }
    configfile = write_config(tmp_path, cfg)
    target = "results/orphan/data/qa/stats.json"
    log = (tmp_path / "killed-run.log").open("w")
    proc = subprocess.Popen(
        snakemake_cmd(tmp_path, configfile, target),
        cwd=ROOT,
        env=ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        snakemake_process = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        while not (family := snakemake_process.children(recursive=True)) or not any(
            "dataset" in p.cmdline() for p in family if p.is_running()
        ):
            assert proc.poll() is None, (tmp_path / "killed-run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the dataset stage did not start within 120 s"
            time.sleep(0.05)
        time.sleep(1.0)  # the stage is blocked on the pipe
        os.kill(proc.pid, signal.SIGKILL)  # Snakemake alone: its jobs get no signal
        proc.wait()
        deadline = time.monotonic() + 20
        while alive := [p for p in family if _running(p)]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
    finally:
        kill_session(proc)
        log.close()
    assert not (tmp_path / "results/orphan/data/qa/examples.jsonl").exists()


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an ended child whose adopting parent has not reaped it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
