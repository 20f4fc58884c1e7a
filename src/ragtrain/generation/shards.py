"""Sharded, resumable generation stages (self-demos, pseudo-queries) end to end.

A generation stage samples from a model in shards kept in the node's work folder
(ragtrain.core.workdir), so that a killed job resumes after its last complete shard.
The work folder is dropped once the output and, last, the stats are written: the
stats' presence means the output is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ragtrain.core.records import write_json, write_jsonl
from ragtrain.core.workdir import finish, work_dir
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import load_generator

# generate(items, load_generator, template, params, work) -> (records, stats), e.g.
# ragtrain.generation.selfdemo.sample_demos.
Generate = Callable[..., tuple[list[dict], dict]]


def generate_in_shards(
    generate: Generate,
    items: list[dict],
    model: str | Path,
    prompt: str | Path,
    params: dict,
    work_root: str | Path,
    inputs: list[str | Path],
    output: str | Path,
    stats_path: str | Path,
) -> dict:
    """Run `generate` over `items` with `model` and the prompt template at `prompt`, its
    shards under the work folder of `params` (cleared if `inputs` changed since), write the
    records to `output` and the stats to `stats_path`, and drop the work folder. The model
    is loaded only if a shard is missing. Returns the stats."""
    template = PromptTemplate(prompt)
    work = work_dir(work_root, params, inputs)
    records, stats = generate(
        items, lambda: load_generator(model, params["generation"]), template, params, work
    )
    write_jsonl(output, records)
    write_json(stats_path, stats)
    finish(work)
    return stats
