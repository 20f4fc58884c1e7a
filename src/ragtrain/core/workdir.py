"""Resumable state of long stages, outside Snakemake's declared outputs.

Snakemake deletes a job's outputs before it reruns the job, so shards and checkpoints
live in an undeclared folder, `results/<run>/work/<section>/<node>/<hash of the node's
params>/`. A manifest records the inputs the state was built from: if an input changed
since, the state is stale and is cleared rather than resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path

from ragtrain.core.records import write_json

log = logging.getLogger(__name__)


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def _fingerprint(paths: list[str | Path]) -> dict[str, list[int]]:
    """Size and modification time of every input file (folders: of the files inside)."""
    out: dict[str, list[int]] = {}
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            out[str(f)] = [st.st_size, st.st_mtime_ns]
    return out


# Settings that change no result, left out of the folder's key: turning a tracker on for a
# run that was cut short resumes it (its logs go to the same work folder).
UNKEYED = ("tracking", "run_name")


def work_dir(root: str | Path, params: dict, inputs: list[str | Path]) -> Path:
    """The node's work folder under `root`, emptied if its inputs changed since it was made."""
    params = {k: v for k, v in params.items() if k not in UNKEYED}
    path = Path(root) / params_hash(params)
    manifest = path / "manifest.json"
    expected = {"params": params, "inputs": _fingerprint(inputs)}
    if path.exists():
        try:
            found = json.loads(manifest.read_text())
        except (OSError, ValueError):
            found = None
        if found != json.loads(json.dumps(expected)):
            log.info("work folder %s: inputs changed, starting afresh", path)
            shutil.rmtree(path)
        else:
            log.info("work folder %s: resuming", path)
    path.mkdir(parents=True, exist_ok=True)
    if not manifest.exists():
        write_json(manifest, expected)
    return path


def finish(path: Path) -> None:
    """Drop the work folder once the declared outputs are written (and the node's folder
    above it, if no other settings' state is left there)."""
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty: another settings' state
        path.parent.rmdir()
