"""Start a training stage on the GPUs (and nodes) a job was given.

`python -m ragtrain.launch --gpus G --nodes K -- <stage> <args...>` runs
`python -m ragtrain <stage> <args...>`:

- in this process's place when it is one process (one GPU, or none);
- under `accelerate launch --multi_gpu --num_processes G` on one node with G > 1 GPUs;
- on K > 1 nodes, as `srun` with one task per node, each task starting
  `accelerate launch` for its node's G GPUs around a rendezvous on the first node.

Commands are argument lists handed to `exec`, never a shell string, so no config value
is ever parsed by a shell. DeepSpeed is not a launcher concern here: a training node's
`deepspeed: zero2 | zero3` reaches the Trainer's arguments (resources/deepspeed/).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

RENDEZVOUS_PORT = 29500
# The Snakemake process that runs a job, as `host:pid` (common.smk's shell prefix).
SCHEDULER_ENV = "RAGTRAIN_SCHEDULER"


def scheduler_id() -> str:
    """This process as the scheduler of the jobs it starts: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def die_with_scheduler(environ: Mapping[str, str] = os.environ, interval: float = 0.5) -> bool:
    """End this stage, and the processes it started, when the Snakemake process that
    runs its job is gone; True where it watches.

    A job's stage is the child of a shell that Snakemake starts: killed with SIGKILL,
    Snakemake ends no job, and the shell and its stage, adopted by init, would go on
    writing outputs while a rerun starts the same job. A parent-death signal (prctl)
    fires with the stage's parent, the shell, which outlives Snakemake; so a daemon
    thread watches the process SCHEDULER_ENV names. Nothing is watched outside Snakemake
    (a stage run alone, under nohup, lives on) nor on another host (a task of a
    multi-node job: Slurm ends its steps)."""
    host, _, pid = environ.get(SCHEDULER_ENV, "").rpartition(":")
    if not pid.isdigit() or host != socket.gethostname() or not Path("/proc/self").exists():
        return False
    watcher = threading.Thread(
        target=_watch, args=(int(pid), interval), name="scheduler-watch", daemon=True
    )
    watcher.start()
    return True


def _watch(pid: int, interval: float) -> None:
    while _alive(pid):
        time.sleep(interval)
    print(
        f"ragtrain: Snakemake (process {pid}) has ended: this job's stage stops",
        file=sys.stderr,
        flush=True,
    )
    for child in reversed(_descendants(os.getpid())):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    os._exit(128 + signal.SIGTERM)


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """Whether a process runs (one killed but not yet reaped, a zombie, does not)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    """The processes below `pid`, parents before their children."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _python_stage(stage: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "ragtrain", *stage]


def _accelerate(processes: int, machines: Sequence[str] = ("--num_machines", "1")) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    return [*launch, "--num_processes", str(processes), *machines]


def command(stage: Sequence[str], processes: int, nodes: int = 1) -> list[str]:
    """The command that runs `stage` as `processes` processes on each of `nodes` nodes."""
    if processes < 1 or nodes < 1:
        raise ValueError(f"expected at least one process and node, got {processes} / {nodes}")
    if nodes > 1:
        # Each node's task runs this module again, with its rank from Slurm.
        inner = [sys.executable, "-m", "ragtrain.launch", "--processes", str(processes)]
        inner += ["--nodes", str(nodes), "--node-task", "--", *stage]
        return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", *inner]
    if processes == 1:
        return _python_stage(stage)
    return [*_accelerate(processes), "-m", "ragtrain", *stage]


def node_task_command(
    stage: Sequence[str], processes: int, nodes: int, environ: Mapping[str, str]
) -> list[str]:
    """One node's share of a multi-node run, inside `srun`: this node's rank and the
    head node come from Slurm's variables, which srun sets for its tasks (the jobstep
    plugin clears them in the job's own shell)."""
    try:
        rank = int(environ["SLURM_NODEID"])
        nodelist = environ["SLURM_JOB_NODELIST"]
    except KeyError as missing:
        raise RuntimeError(f"--node-task runs inside srun: {missing} is not set") from None
    head = _first_host(nodelist)
    machines = ["--num_machines", str(nodes), "--machine_rank", str(rank)]
    machines += ["--main_process_ip", head, "--main_process_port", str(RENDEZVOUS_PORT)]
    return [*_accelerate(processes * nodes, machines), "-m", "ragtrain", *stage]


def _first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (`gpu[01-04]` -> `gpu01`), via scontrol."""
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True
    )
    return out.stdout.split()[0]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def processes_for(gpus: int) -> int:
    """One process per GPU the job was given; one process without CUDA (a CPU run, or
    the fake GPUs of a test cluster)."""
    if gpus <= 1 or not _has_cuda():
        return 1
    import torch

    found = torch.cuda.device_count()
    if found < gpus:
        raise RuntimeError(f"the job asked for {gpus} GPUs but sees {found}")
    return gpus


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ragtrain.launch", description=__doc__)
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per node (resources.gpu)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (resources.nodes)")
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="processes per node, overriding --gpus (e.g. 2 for a CPU run in two processes)",
    )
    parser.add_argument("--node-task", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("stage", nargs=argparse.REMAINDER, help="-- <stage> <args...>")
    args = parser.parse_args(argv)
    stage = args.stage[1:] if args.stage[:1] == ["--"] else args.stage
    if not stage:
        parser.error("give the stage to run after --")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ragtrain.core.security import install_redaction

    install_redaction()  # tokens in the environment never reach a log
    processes = args.processes or processes_for(args.gpus)
    if args.node_task:
        cmd = node_task_command(stage, processes, args.nodes, os.environ)
    else:
        cmd = command(stage, processes, args.nodes)
    env = dict(os.environ)
    if not _has_cuda():
        # Processes on CPU form a gloo group. (accelerate's own `--cpu` flag would start
        # a single process: its multi-CPU path is mpirun.)
        env["ACCELERATE_USE_CPU"] = "true"
    log.info("launch: %d process(es) x %d node(s): %s", processes, args.nodes, cmd[:8])
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
