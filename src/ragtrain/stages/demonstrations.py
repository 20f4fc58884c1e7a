"""Stages of self-demonstrations as published: the prompt search whose prompts the
sampling strategies use, and the judge's tournament that picks each question's
demonstration among the strategies' answers."""

from __future__ import annotations

from ragtrain.core.records import RecordError, write_json, write_jsonl
from ragtrain.core.settings import merge
from ragtrain.graph.kinds import PRODUCT_DEFAULTS
from ragtrain.stages.common import add_judge, add_stage, generation, log, model_judge


def cmd_prompt_search(args) -> None:
    from ragtrain.core.workdir import finish, work_dir
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.calls import CachedChat, Engines
    from ragtrain.generation.engine import Sampling, load_generator
    from ragtrain.generation.prompt_search import PromptSearch
    from ragtrain.judges.model import RawCache, model_fingerprint
    from ragtrain.stages.products import dataset_examples

    params = merge(PRODUCT_DEFAULTS["prompt_search"], args.params)
    params["generation"] = generation(params)
    templates = {PromptTemplate(t).path.stem: t for t in args.template}
    missing = [n for n in params["seeds"] if n not in templates]
    if missing:
        raise ValueError(f"seeds: no --template for {', '.join(missing)}")
    work = work_dir(args.work, params, [args.model, args.examples, *args.template])
    engines = Engines(load_generator)
    chat = CachedChat(
        engines.loader(args.model, params["generation"]),
        model_fingerprint(args.model),
        RawCache(work / "calls.jsonl"),
    )
    search = PromptSearch(
        chat,
        model_judge(args, engines),
        user=PromptTemplate(args.prompt),
        critique=PromptTemplate(templates[params["critique_prompt"]]),
        rewrite=PromptTemplate(templates[params["rewrite_prompt"]]),
        sampling=Sampling.from_params(params["generation"]),
        params=params,
        progress=lambda message: log.info("prompt search: %s", message),
    )
    seed_prompts = [PromptTemplate(templates[n]).render({}) for n in params["seeds"]]
    records, stats = search.run(dataset_examples(args.examples, params), seed_prompts)
    stats["judge"] = args.judge["name"]
    write_jsonl(args.output, records)
    write_json(args.stats, stats)
    finish(work)
    log.info("prompt-search: %s", stats)


def cmd_tournament(args) -> None:
    from ragtrain.core.records import iter_jsonl, require
    from ragtrain.generation.judge import assign_splits
    from ragtrain.generation.tournament import rejected_of, run_tournament

    params = merge(PRODUCT_DEFAULTS["tournament"], args.params)
    records = []
    for lineno, record in iter_jsonl(args.input):
        for field, type_ in (("id", str), ("question", str), ("samples", list), ("prompt", list)):
            require(record, field, type_, args.input, lineno)
        if any(not isinstance(s, dict) or not isinstance(s.get("text"), str)
               for s in record["samples"]):  # fmt: skip
            raise RecordError(args.input, lineno, "every sample needs a string field 'text'")
        records.append(record)
    results, stats = run_tournament(records, model_judge(args), params)
    results = [{**r, "rejected": rejected_of(r, params["rejected"])} for r in results]
    results = assign_splits(results, params)
    stats.update(
        judge=args.judge["name"],
        rejected=params["rejected"],
        n_dev=sum(r["split"] == "dev" for r in results),
    )
    write_jsonl(args.output, results)
    write_json(args.stats, stats)
    log.info("tournament: %s", stats)


def register(stages) -> None:
    p = add_stage(
        stages,
        "prompt-search",
        cmd_prompt_search,
        "beam search over system prompts scored by a score judge (model calls cached; resumed)",
    )
    p.add_argument("--model", required=True, help="the model whose prompt is searched")
    p.add_argument("--examples", required=True, help="questions (with documents) to answer")
    p.add_argument("--prompt", required=True, help="the user turn's template")
    p.add_argument(
        "--template",
        action="append",
        default=[],
        help="a template the search reads: seed prompts, critique, rewrite (repeatable)",
    )
    add_judge(p, required=True)
    p.add_argument("--work", required=True, help="work folder root (cached calls; resumed)")
    p.add_argument("--output", required=True, help="the prompts found, best first (JSONL)")
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "tournament",
        cmd_tournament,
        "a pick judge's brackets over each question's samples: the winner and the losers",
    )
    p.add_argument("--input", required=True, help="sample records (self-demos)")
    add_judge(p, required=True)
    p.add_argument("--output", required=True, help="one record per resolved question (JSONL)")
    p.add_argument("--stats", required=True)
