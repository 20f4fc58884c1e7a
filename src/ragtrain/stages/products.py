"""Product stages: training data made by the model itself. Self-demonstrations, judged
and turned into SFT data or preference pairs, or scored by reward and selected
(best-of-n, segment beam)."""

from __future__ import annotations

from ragtrain.core.records import RecordError, write_json, write_jsonl
from ragtrain.core.settings import merge
from ragtrain.graph.kinds import PRODUCT_DEFAULTS, SOURCE_RETRIEVAL
from ragtrain.stages.common import (
    add_judge,
    add_reward_models,
    add_stage,
    generation,
    log,
    model_judge,
    named_paths,
    reward_input_dirs,
    rewards,
)


def dataset_examples(path, params: dict) -> list[dict]:
    """A dataset's examples, with their own documents under `retrieval: source`."""
    from ragtrain.core.records import read_jsonl
    from ragtrain.data.loaders import with_source_docs

    if params.get("retrieval") == SOURCE_RETRIEVAL:
        return with_source_docs(path)
    return read_jsonl(path)


def cmd_self_demos(args) -> None:
    from functools import partial
    from pathlib import Path

    from ragtrain.core.records import read_jsonl
    from ragtrain.generation.selfdemo import sample_demos
    from ragtrain.generation.shards import generate_in_shards
    from ragtrain.generation.strategies import filled_strategies, load_strategies

    params = merge({**PRODUCT_DEFAULTS["self_demos"], "prompt": "rag"}, args.params)
    params["generation"] = generation(params)
    searches = named_paths(args.search, "--search")
    inputs = [args.model, args.examples, args.prompt, *args.template, *searches.values()]
    sample = sample_demos
    if (strategies := filled_strategies(params)) is not None:
        templates = {Path(t).stem: t for t in args.template}
        ranked = {name: read_jsonl(path) for name, path in searches.items()}
        sample = partial(sample_demos, strategies=load_strategies(strategies, templates, ranked))
    stats = generate_in_shards(
        sample, dataset_examples(args.examples, params), args.model, args.prompt, params,
        args.work, inputs, args.output, args.stats,
    )  # fmt: skip
    log.info("%s: %s", args.stage, stats)


def cmd_judge(args) -> None:
    from ragtrain.core.records import iter_jsonl, require
    from ragtrain.generation.judge import (
        agreement_with_rules,
        assign_splits,
        judge_record,
        judge_stats,
        judge_with_model,
    )

    records = []
    for lineno, record in iter_jsonl(args.input):
        require(record, "answers", list, args.input, lineno)
        require(record, "samples", list, args.input, lineno)
        require(record, "question", str, args.input, lineno)
        for sample in record["samples"]:
            if not isinstance(sample, dict) or not isinstance(sample.get("text"), str):
                raise RecordError(args.input, lineno, "every sample needs a string field 'text'")
        records.append(record)
    judge = model_judge(args)
    if judge:
        judged, replies = judge_with_model(records, judge)
    else:
        judged = [judge_record(record) for record in records]
    judged = assign_splits(judged, args.params)
    stats = judge_stats(judged)
    if args.judge:
        stats.update(judge=args.judge["name"], replies=replies, rules=agreement_with_rules(judged))
    write_jsonl(args.output, judged)
    write_json(args.stats, stats)
    log.info("judge: %s", stats)


def _product(args, build) -> None:
    """SFT data or preference pairs from judged samples, split as the judge split them."""
    from ragtrain.core.records import read_jsonl
    from ragtrain.generation.products import by_split

    judged = read_jsonl(args.input)
    for i, record in enumerate(judged, start=1):
        if "winner" in record:  # a tournament's result
            for field in ("id", "prompt", "answers", "rejected"):
                if field not in record:
                    raise RecordError(args.input, i, f"no field {field!r} (expected a result)")
            continue
        for field in ("id", "prompt", "answers", "samples"):
            if field not in record:
                raise RecordError(args.input, i, f"no field {field!r} (expected judged samples)")
        if any("label" not in s for s in record["samples"]):
            raise RecordError(args.input, i, "a sample has no 'label': run the judge stage first")
    records, stats = build(judged, args.params)
    key = "example_id" if args.stage == "preference-pairs" else "id"
    train, dev = by_split(records, judged, key)
    if not train:
        raise ValueError(
            f"{args.input}: no {args.stage} records for training ({stats});"
            " more questions or samples, or gold_fallback, would give some"
        )
    write_jsonl(args.train, train)
    write_jsonl(args.dev, dev)
    write_json(args.stats, {**stats, "n_train": len(train), "n_dev": len(dev)})
    log.info("%s: %d train, %d dev; %s", args.stage, len(train), len(dev), stats)


def cmd_sft_data(args) -> None:
    from ragtrain.generation.products import sft_data

    _product(args, sft_data)


def cmd_preference_pairs(args) -> None:
    from ragtrain.generation.products import preference_pairs

    _product(args, preference_pairs)


def cmd_reward(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.training.reward_model import RewardModelScorer
    from ragtrain.training.rewards import score_samples

    params = merge(PRODUCT_DEFAULTS["reward"], args.params)
    records = read_jsonl(args.input)
    scorer = RewardModelScorer(args.reward_model_dir, batch_size=params["batch_size"])
    stats = score_samples(records, scorer, args.input, params.get("model"))
    write_jsonl(args.output, records)
    write_json(args.stats, stats)
    log.info("reward: %s", stats)


def _write_sft_product(args, records: list[dict], stats: dict) -> None:
    """SFT records of rejection sampling to their train and dev splits."""
    from ragtrain.training.rejection import split_records

    train, dev = split_records(records)
    if not train:
        raise ValueError(f"{args.stage}: no SFT records for training ({stats})")
    write_jsonl(args.train, train)
    write_jsonl(args.dev, dev)
    write_json(args.stats, {**stats, "n_train": len(train), "n_dev": len(dev)})
    log.info("%s: %d train, %d dev; %s", args.stage, len(train), len(dev), stats)


def cmd_reference_sft(args) -> None:
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.products import reference_sft

    params = merge(PRODUCT_DEFAULTS["reference_sft"], args.params)
    examples = dataset_examples(args.examples, params)
    records, stats = reference_sft(examples, PromptTemplate(args.prompt), params)
    _write_sft_product(args, records, stats)


def cmd_best_of_n(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.core.workdir import finish, work_dir
    from ragtrain.training.rejection import best_of_n

    params = merge(PRODUCT_DEFAULTS["best_of_n"], args.params)
    work = work_dir(args.work, params, [args.input, *reward_input_dirs(args)])
    records, stats = best_of_n(read_jsonl(args.input), rewards(args, params), params, work)
    _write_sft_product(args, records, stats)
    finish(work)


def cmd_segment_beam(args) -> None:
    from functools import partial

    from ragtrain.core.workdir import finish, work_dir
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.engine import load_generator
    from ragtrain.training.rejection import segment_beam_demos

    params = merge(PRODUCT_DEFAULTS["segment_beam"], args.params)
    params["generation"] = generation(params)
    inputs = [
        args.model,
        args.examples,
        args.prompt,
        *reward_input_dirs(args),
    ]
    work = work_dir(args.work, params, inputs)
    records, stats = segment_beam_demos(
        dataset_examples(args.examples, params),
        partial(load_generator, args.model, params["generation"]),
        PromptTemplate(args.prompt),
        params,
        work,
        load_rewards=partial(rewards, args, params),
    )
    _write_sft_product(args, records, stats)
    finish(work)


def register(stages) -> None:
    p = add_stage(
        stages,
        "self-demos",
        cmd_self_demos,
        "sample n responses per question with the RAG prompt (sharded, resumable)",
    )
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--examples", required=True, help="examples with retrieved docs")
    p.add_argument("--prompt", required=True, help="Jinja template of the user turn")
    p.add_argument(
        "--template",
        action="append",
        default=[],
        help="a template the strategies read, named by its file's stem (repeatable)",
    )
    p.add_argument(
        "--search",
        action="append",
        metavar="NAME=FILE",
        help="a prompt search's prompts, best first, that strategies name (repeatable)",
    )
    p.add_argument("--work", required=True, help="work folder root (shards; resumed)")
    p.add_argument("--output", required=True, help="sample records (JSONL)")
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "judge",
        cmd_judge,
        "label each sample correct / incorrect / refuse, hold out dev questions; counts to stats",
    )
    p.add_argument("--input", required=True, help="sample records (JSONL)")
    p.add_argument("--output", required=True, help="judged records (JSONL)")
    p.add_argument("--stats", required=True)
    add_judge(p)

    for name, func, help_ in (
        ("sft-data", cmd_sft_data, "SFT data (prompt, completion) from judged samples"),
        (
            "preference-pairs",
            cmd_preference_pairs,
            "DPO pairs (prompt, chosen, rejected) from judged samples",
        ),
    ):
        p = add_stage(stages, name, func, help_)
        p.add_argument("--input", required=True, help="judged records (JSONL)")
        p.add_argument("--train", required=True, help="output train split (JSONL)")
        p.add_argument("--dev", required=True, help="output held-out split (JSONL)")
        p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "reference-sft",
        cmd_reference_sft,
        "SFT data: each question's reference answer (a teacher's) on its prompt",
    )
    p.add_argument("--examples", required=True, help="questions with their documents (JSONL)")
    p.add_argument("--prompt", required=True, help="Jinja template of the user turn")
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)

    p = add_stage(stages, "reward", cmd_reward, "score every sample of a generation product")
    p.add_argument("--input", required=True, help="sample records (self-demos, judged)")
    p.add_argument("--reward-model-dir", required=True, help="a trained reward model")
    p.add_argument("--output", required=True, help="the records, each sample with reward_model")
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages, "best-of-n", cmd_best_of_n, "SFT data: each question's best sample by reward"
    )
    p.add_argument("--input", required=True, help="sample records (self-demos, judged, scored)")
    add_reward_models(p)
    p.add_argument("--work", required=True, help="work folder root (scored shards; resumed)")
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "segment-beam",
        cmd_segment_beam,
        "SFT data: answers grown sentence by sentence, the best partial answers kept by reward",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--examples", required=True, help="questions with their documents (JSONL)")
    p.add_argument("--prompt", required=True)
    add_reward_models(p)
    p.add_argument("--work", required=True, help="work folder root (shards; resumed)")
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)
