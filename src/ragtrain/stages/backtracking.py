"""Backtracking correction's stages: SFT data in the step format, step data by error
sampling, published step files as DPO pairs, and pair products mixed into one."""

from __future__ import annotations

from ragtrain.core.records import write_jsonl
from ragtrain.core.settings import merge
from ragtrain.graph.kinds import PRODUCT_DEFAULTS
from ragtrain.stages.common import add_stage, generation, write_split


def cmd_step_sft(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.generation.backtracking import StepFormat, step_sft_records

    params = merge(PRODUCT_DEFAULTS["step_sft"], args.params)
    records, stats = step_sft_records(read_jsonl(args.examples), StepFormat(args.prompt), params)
    write_split(args, records, stats, "step records")


def chat_text(model_dir: str):
    """The model's chat template over a conversation, up to the assistant's turn."""
    from ragtrain.training.toolkit import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    return lambda conversation: tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True
    )


def cmd_step_pairs(args) -> None:
    from functools import partial

    from ragtrain.core.records import read_jsonl
    from ragtrain.core.workdir import finish, work_dir
    from ragtrain.generation.backtracking import StepFormat, step_items, step_pairs
    from ragtrain.generation.engine import load_generator
    from ragtrain.generation.selfdemo import sample_demos

    params = merge(PRODUCT_DEFAULTS["step_pairs"], args.params)
    params["generation"] = {**generation(params), "temperature": params["temperature"]}
    fmt = StepFormat(args.prompt)
    step = params["step"]
    items = step_items(read_jsonl(args.examples), fmt, step)
    work = work_dir(args.work, params, [args.model, args.examples, args.prompt])
    records, sample_stats = sample_demos(
        items, partial(load_generator, args.model, params["generation"]), fmt.template,
        params, work, desc=f"step {step}", prefixed=step > 1,
    )  # fmt: skip
    write_jsonl(args.samples, records)
    pairs, stats = step_pairs(records, fmt, step, chat_text(args.model), params)
    drop = ("n_examples", "n_samples", "samples_per_example")
    stats["generation"] = {k: v for k, v in sample_stats.items() if k not in drop}
    # No pair: no sample was wrong at this step; the DPO node on it leaves its model as
    # it is (ragtrain.training.sft_dpo).
    write_split(args, pairs, stats, f"step {step} pairs (no sample was wrong)", empty_ok=True)
    finish(work)


def cmd_pair_file(args) -> None:
    from ragtrain.data.preferences import load_pairs
    from ragtrain.generation.judge import dev_ids

    params = merge(PRODUCT_DEFAULTS["pair_file"], args.params)
    pairs = load_pairs(args.input, params["format"])
    if any("prompt" not in p for p in pairs):
        raise ValueError(f"{args.input}: holds document preferences, not response pairs")
    held = dev_ids([p["id"] for p in pairs], params["dev_fraction"], params["seed"])
    records = [{**p, "split": "dev" if p["id"] in held else "train"} for p in pairs]
    steps = sorted({p["meta"].get("step") for p in pairs} - {None})
    write_split(args, records, {"path": args.input, "steps": steps}, "pairs")


def cmd_pair_mix(args) -> None:
    from ragtrain.core.records import RecordError, read_jsonl

    parts, seen = {"train": [], "dev": []}, {}
    for part, files in (("train", args.part_train), ("dev", args.part_dev)):
        for path in files:
            for record in read_jsonl(path):
                if record["id"] in seen:
                    raise RecordError(
                        path, None, f"pair id {record['id']!r} also in {seen[record['id']]}"
                    )
                seen[record["id"]] = path
                parts[part].append(record)
    records = [{**r, "split": part} for part, rs in parts.items() for r in rs]
    by_step: dict[str, int] = {}
    for r in records:
        step = str((r.get("meta") or {}).get("step"))
        by_step[step] = by_step.get(step, 0) + 1
    stats = {"parts": len(args.part_train), "pairs_by_step": by_step}
    write_split(args, records, stats, "pairs (no part has one)", empty_ok=True)


def _outputs(p) -> None:
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True, help="written last: the product is complete")


def register(stages) -> None:
    p = add_stage(
        stages,
        "step-sft",
        cmd_step_sft,
        "SFT data in the step format: each document's true step, then the answer",
    )
    p.add_argument("--examples", required=True, help="a dataset's questions with documents")
    p.add_argument("--prompt", required=True, help="the step template")
    _outputs(p)

    p = add_stage(
        stages,
        "step-pairs",
        cmd_step_pairs,
        "step K's DPO pairs by error sampling: continuations of the true steps before it",
    )
    p.add_argument("--model", required=True, help="the current model (sampled from)")
    p.add_argument("--examples", required=True, help="a dataset's questions with documents")
    p.add_argument("--prompt", required=True, help="the step template")
    p.add_argument("--work", required=True, help="work folder root (shards; resumed)")
    p.add_argument("--samples", required=True, help="output: every continuation sampled")
    _outputs(p)

    p = add_stage(
        stages,
        "pair-file",
        cmd_pair_file,
        "a published pair file (BackTracking's stepK) as DPO pairs, prompts taken as text",
    )
    p.add_argument("--input", required=True, help="the pair file (its `path`)")
    _outputs(p)

    p = add_stage(stages, "pair-mix", cmd_pair_mix, "several pair products as one")
    p.add_argument("--part-train", action="append", required=True, help="a part's train pairs")
    p.add_argument("--part-dev", action="append", required=True, help="a part's dev pairs")
    _outputs(p)
