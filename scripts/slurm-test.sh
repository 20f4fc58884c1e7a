#!/usr/bin/env bash
# The tiny end-to-end config through Snakemake's Slurm executor, run as users type it
# (`snakemake --profile slurm all`), on a real one-node Slurm cluster started here
# (Debian slurm-wlm + munge, two fake GPUs), then checks from Slurm's own records that
# every job went through sbatch and that the training jobs asked for a GPU and got one.
# Run as root (`make slurm-test`); takes minutes.
#
# The cluster's state, logs and fake devices live in a temp folder; only its
# slurm.conf and gres.conf go to /etc/slurm (see CONF below), and are removed on exit
# with the daemons started here, which are stopped by their PIDs, failed or not.
# PYTHON picks the interpreter (default: .venv's).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
# Absolute, since jobs run in another folder; not resolved, or a venv's python
# would become the system's.
PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")
WORK=$(mktemp -d /tmp/ragtrain-slurm.XXXXXX)
# Slurm's compiled-in config path. SLURM_CONF pointing elsewhere is not enough: the
# jobstep plugin drops SLURM_* variables before the job's `srun`, which then finds
# no configuration.
CONF=/etc/slurm/slurm.conf
MARK="# Written by ragtrain's scripts/slurm-test.sh; removed when it ends."
# Finished jobs must stay listed for squeue (the profile's status command) and for
# the checks at the end, which come after the whole run.
MIN_JOB_AGE=3600

die() {
    echo "slurm-test: FAILED: $*" >&2
    exit 1
}

# Stop a daemon by the PID in its pid file and wait until it is gone.
stop_pidfile() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    echo "slurm-test: $pidfile: PID $pid still running after 10 s; sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    set +e
    if [[ -s $WORK/run/slurmctld.pid ]] && kill -0 "$(<"$WORK/run/slurmctld.pid")" 2>/dev/null; then
        # Jobs first: their slurmstepd processes would outlive slurmd.
        scancel --quiet --user root 2>/dev/null
        sleep 1
    fi
    stop_pidfile "$WORK/run/slurmd.pid"
    stop_pidfile "$WORK/run/slurmctld.pid"
    stop_pidfile "$WORK/munge/munged.pid"
    if [[ -f $CONF ]] && [[ $(head -n 1 "$CONF") == "$MARK" ]]; then
        rm -f "$CONF" "$(dirname "$CONF")/gres.conf"
    fi
    if [[ $status -eq 0 ]]; then
        rm -rf "$WORK"
    else
        echo "slurm-test: logs kept in $WORK (log/, snakemake.log, run/.snakemake/slurm_logs/)" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $EUID -eq 0 ]] || die "must run as root (it installs and starts Slurm and munge)"
[[ -x $PYTHON ]] || die "$PYTHON not found: run \`make install\` first, or set PYTHON"
"$PYTHON" -c "import snakemake_executor_plugin_slurm" 2>/dev/null ||
    die "the Slurm executor plugin is not installed in $PYTHON's environment (make install)"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge
fi

# A config of ours left by a killed run is overwritten; anyone else's is not.
if [[ -f $CONF ]] && [[ $(head -n 1 "$CONF") != "$MARK" ]]; then
    die "$CONF exists and is not ours: this machine has a Slurm cluster already"
fi
mkdir -p "$(dirname "$CONF")" "$WORK"/{run,log,spool/ctld,spool/d,dev,munge}

# --- munge: Slurm's authentication. Reuse a running munged, else start one.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    mkdir -p /run/munge
    chown munge:munge /run/munge "$WORK/munge"
    # munged runs as its own user and must reach its folder inside ours (mktemp: 700).
    chmod 711 "$WORK"
    runuser -u munge -- /usr/sbin/munged \
        --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/munge/munged.log"
    munge -n | unmunge >/dev/null || die "munged does not answer (see $WORK/munge/munged.log)"
fi

# --- the cluster: one node, this machine's CPUs and memory, two fake GPUs.
CPUS=$(nproc)
# slurmd drains a node whose RealMemory exceeds what it finds: leave a margin.
MEM_MB=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 256))
# A GPU gres needs device files (without File= slurmd drops it and the node goes
# INVAL); character devices 1:3 are /dev/null's.
for i in 0 1; do
    mknod "$WORK/dev/fakegpu$i" c 1 3
done
cat >"$CONF" <<EOF
$MARK
ClusterName=ragtrain-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$WORK/spool/ctld
SlurmdSpoolDir=$WORK/spool/d
SlurmctldPidFile=$WORK/run/slurmctld.pid
SlurmdPidFile=$WORK/run/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$WORK/log/jobcomp.log
MinJobAge=$MIN_JOB_AGE
# Without a default, each job takes the whole node's memory and jobs run one by one.
DefMemPerCPU=1000
GresTypes=gpu
NodeName=localhost NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
printf '%s\nNodeName=localhost Name=gpu File=%s\n' "$MARK" "$WORK/dev/fakegpu[0-1]" \
    >"$(dirname "$CONF")/gres.conf"

/usr/sbin/slurmctld
# -N: the node is named localhost in slurm.conf, not by this machine's host name.
/usr/sbin/slurmd -N localhost

# sinfo itself waits up to MessageTimeout (10 s) for a controller that is not up.
state=
deadline=$((SECONDS + 60))
while [[ $state != idle && $SECONDS -lt $deadline ]]; do
    sleep 1
    if [[ -s $WORK/run/slurmctld.pid ]] && ! kill -0 "$(<"$WORK/run/slurmctld.pid")" 2>/dev/null; then
        break
    fi
    state=$(sinfo -h -N -o %T 2>/dev/null || true)
done
if [[ $state != idle ]]; then
    tail -n 20 "$WORK/log/slurmctld.log" "$WORK/log/slurmd.log" >&2 || true
    die "the node is '${state:-not listed}', not idle (slurmctld and slurmd logs above)"
fi
sinfo -N -o '%N %T %c %m %G'

# Rule shells call `python -m ragtrain`: the jobs inherit this PATH (sbatch exports
# the environment), so they find the same interpreter. Nothing may reach the hub.
PATH=$(dirname "$PYTHON"):$PATH
export PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

# --- the tiny config, with the tests' tiny random Llama and HF generation.
"$PYTHON" - "$WORK" "$ROOT/tests/tiny.yaml" <<'EOF'
import sys
from pathlib import Path

import yaml

from ragtrain.training.models import build_tiny_llama

work, tiny = Path(sys.argv[1]), Path(sys.argv[2])
cfg = yaml.safe_load(tiny.read_text())
cfg["models"]["base"]["path"] = str(build_tiny_llama(work / "tiny-llama"))
cfg["generation"]["backend"] = "hf"
# Stage defaults that fit this one small node; one node asks for its own memory.
small = {"mem_mb": 3000, "runtime": 60}
cfg["resources"] = {"train": small, "generate": small, "cpu": {**small, "mem_mb": 2000}}
cfg["models"]["sft"]["resources"] = {"mem_mb": 2500}
(work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
EOF

# The command as users type it, from the repository root: `snakemake --profile slurm
# all`, the profile found by name (the link `make install` puts in Snakemake's user
# profile folder) and the Snakefile by Snakemake's own search. Then what this test adds:
# its config, a run folder outside the checkout, and two settings for this small node.
# (The target goes before --configfile, which takes every word after it as a file.)
cd "$ROOT"
[[ $(command -v snakemake) == "$(dirname "$PYTHON")/snakemake" ]] ||
    die "snakemake on PATH is $(command -v snakemake || echo 'none'), not $(dirname "$PYTHON")/snakemake"
"$PYTHON" scripts/profiles.py status slurm ||
    die "\`--profile slurm\` does not find this checkout's profiles/slurm (make profiles)"
snakemake=(
    snakemake --profile slurm all
    --configfile "$WORK/tiny.yaml"
    --directory "$WORK/run"
    # The training rule asks for 4 threads (--cpus-per-task), more than this node has.
    --max-threads "$CPUS"
    # 40 s by default, which is kind to a big cluster's controller but makes the
    # tiny run, whose jobs take seconds, last much longer.
    --slurm-init-seconds-before-status-checks 5
)
"${snakemake[@]}" --dry-run --quiet rules >"$WORK/plan.txt" 2>&1

start=$SECONDS
if ! "${snakemake[@]}" >"$WORK/snakemake.log" 2>&1; then
    tail -n 40 "$WORK/snakemake.log" >&2
    die "snakemake failed (log: $WORK/snakemake.log)"
fi
echo "slurm-test: the workflow ran through Slurm in $((SECONDS - start)) s; it printed (abridged):"
# What users see (README, "Using the workflow"): the first submissions and the end.
grep -m 3 -E "^Job [0-9]+ has been submitted with SLURM jobid" "$WORK/snakemake.log" || true
grep -E "^[0-9]+ of [0-9]+ steps \(100%\) done" "$WORK/snakemake.log" || true
[[ -s $WORK/run/results/tiny/report/summary.md ]] || die "no report/summary.md"

# --- what Slurm saw: every planned job (but the target rule `all`, which runs no
# command) as a COMPLETED Slurm job; training jobs with gres:gpu:1 asked and got.
# JOB_GRES (with -d) is what a job was given; TRES never shows GPUs here, since
# Slurm tracks gres/gpu as a TRES only with accounting (slurmdbd).
scontrol -d -o show job >"$WORK/jobs.txt"
"$PYTHON" - "$WORK/plan.txt" "$WORK/jobs.txt" "$WORK/log/jobcomp.log" <<'EOF'
import sys
from collections import Counter
from pathlib import Path

from ragtrain.graph.dryrun import planned_jobs

plan_file, jobs_file, jobcomp_file = map(Path, sys.argv[1:])
TRAIN_RULES = {"train", "train_biencoder", "train_colbert", "train_reward_model", "train_rl"}
# Generation (vLLM) asks for a GPU too, model judges included; the other stages for none.
GPU_RULES = TRAIN_RULES | {"self_demos", "pseudo_queries", "segment_beam", "reward", "evaluate"}
GPU_RULES |= {"judge_by_model", "judge_relevance", "judge_evaluation"}


def fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


planned = Counter(planned_jobs(plan_file.read_text()))
del planned["all"]  # a local rule: no Slurm job

jobs = [fields(line) for line in jobs_file.read_text().splitlines() if line.strip()]
errors = []
ran = Counter()
for job in jobs:
    rule = job.get("Comment", "").removeprefix("rule_").split("_wildcards_")[0]
    ran[rule] += 1
    where = f"Slurm job {job['JobId']} ({job.get('Comment')})"
    if job.get("JobState") != "COMPLETED":
        errors.append(f"{where}: state {job.get('JobState')}")
    # --gpus=1 shows as TresPerJob=gres:gpu:1, the GPU given as JOB_GRES=gpu:1.
    asked, got = job.get("TresPerJob", ""), job.get("JOB_GRES", "")
    if rule in GPU_RULES:
        if asked != "gres:gpu:1" or got != "gpu:1":
            errors.append(f"{where}: asked {asked or 'no GPU'}, given {got or 'none'}")
    elif "gpu" in asked + got:
        errors.append(f"{where}: a GPU for a rule that needs none ({asked}, {got})")
    # Memory from the config: the stage defaults, and the sft node's own.
    memory = {"train_wildcards_sft": "2500M"}.get(job.get("Comment", "").removeprefix("rule_"))
    memory = memory or ("3000M" if rule in GPU_RULES else None)
    if memory and job.get("MinMemoryNode") != memory:
        errors.append(f"{where}: memory {job.get('MinMemoryNode')}, config asks {memory}")
if ran != planned:
    errors.append(f"jobs by rule: planned {dict(planned)}, Slurm ran {dict(ran)}")
if not sum(planned[rule] for rule in TRAIN_RULES):
    errors.append("the plan has no training job")

completed = [fields(line) for line in jobcomp_file.read_text().splitlines()]
states = Counter(job.get("JobState") for job in completed)
if states != Counter({"COMPLETED": sum(planned.values())}):
    errors.append(f"job completion log: {dict(states)}, expected {sum(planned.values())} COMPLETED")

if errors:
    sys.exit("slurm-test: FAILED:\n  " + "\n  ".join(errors))
gpu_jobs = sum(ran[rule] for rule in GPU_RULES)
train_jobs = sum(ran[rule] for rule in TRAIN_RULES)
print(
    f"slurm-test: OK: {sum(ran.values())} Slurm jobs, all COMPLETED; {gpu_jobs} with a GPU"
    f" ({train_jobs} training)"
)
EOF
