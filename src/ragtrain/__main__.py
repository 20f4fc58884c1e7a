"""`python -m ragtrain <stage> ...`: every workflow stage, runnable alone.

Each stage takes the node's config as JSON (`--params '{...}'` or `--params @node.json`),
reads its inputs, and writes its outputs atomically. Bad input ends the stage with
a one-line error (`path:line: what is wrong`) and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

from ragtrain.core.records import RecordError, write_json, write_jsonl
from ragtrain.core.security import install_redaction, redact
from ragtrain.graph.config import (
    GENERATION_DEFAULTS,
    MODEL_DEFAULTS,
    NO_RETRIEVAL,
    PRODUCT_DEFAULTS,
    RETRIEVER_DEFAULTS,
)

log = logging.getLogger("ragtrain")


def _params(value: str) -> dict:
    try:
        text = Path(value[1:]).read_text() if value.startswith("@") else value
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {value[1:]}: {e}") from e
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--params is not valid JSON: {e}") from e
    if not isinstance(params, dict):
        raise argparse.ArgumentTypeError("--params must be a JSON object")
    return params


def _retriever(params: dict) -> dict:
    """Defaults of the retriever's kind under the given settings (for stages run alone)."""
    kind = params.get("kind")
    if kind not in RETRIEVER_DEFAULTS:
        raise ValueError(f"--params: 'kind' must be one of {sorted(RETRIEVER_DEFAULTS)}")
    return {**RETRIEVER_DEFAULTS[kind], **params}


def cmd_world(args) -> None:
    from ragtrain.data.world import WorldConfig, generate_world, write_world

    world = generate_world(WorldConfig.from_dict(args.params))
    write_world(world, args.corpus, args.questions, args.stats, args.entities)
    n_questions = sum(len(examples) for examples in world.splits.values())
    log.info("world: %d passages, %d questions", len(world.passages), n_questions)


def cmd_corpus(args) -> None:
    from ragtrain.data.loaders import load_beir_corpus

    passages = load_beir_corpus(args.input)
    write_jsonl(args.output, passages)
    log.info("corpus: %d passages", len(passages))


def dataset_stats(examples: list[dict]) -> dict:
    types = Counter(ex.get("meta", {}).get("type", "unknown") for ex in examples)
    answerable = sum(1 for ex in examples if ex["answers"])
    return {
        "n": len(examples),
        "n_answerable": answerable,
        "n_unanswerable": len(examples) - answerable,
        "types": dict(sorted(types.items())),
    }


def cmd_dataset(args) -> None:
    from ragtrain.data.loaders import load_qa

    params = args.params
    if params.get("world"):
        examples = [
            ex
            for ex in load_qa(args.input, "ragtrain")
            if ex["meta"].get("split") == params["split"]
        ]
    else:
        examples = load_qa(args.input, params.get("format", "auto"))
    if params.get("limit"):
        examples = examples[: params["limit"]]
    if not examples:
        raise RecordError(args.input, None, "no examples (check the split or the file)")
    examples = [{**ex, "docs": []} for ex in examples]
    write_jsonl(args.output, examples)
    write_json(args.stats, dataset_stats(examples))
    log.info("dataset: %d examples", len(examples))


def cmd_index(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.retrieval.index import build_index

    corpus = read_jsonl(args.corpus)
    build_index(corpus, _retriever(args.params), Path(args.output))
    log.info("index: %s over %d passages", args.params["kind"], len(corpus))


def cmd_retrieve(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.retrieval.index import Index, retrieve

    index = Index(args.index)
    k = _retriever({**index.params, **args.params})["k"]
    examples, stats = retrieve(read_jsonl(args.examples), index, k)
    write_jsonl(args.output, examples)
    write_json(args.stats, stats)
    log.info("retrieve: %s", stats)


def cmd_base_model(args) -> None:
    from ragtrain.training.models import import_base_model

    import_base_model({**MODEL_DEFAULTS["base"], **args.params}, args.output)


def cmd_evaluate(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.evaluation.evaluate import evaluate
    from ragtrain.generation.engine import load_generator

    params = {
        "model": Path(args.model).name,
        "dataset": Path(args.examples).parent.name,
        "retrieval": "given",
        **args.params,
    }
    params["generation"] = _generation(params)
    examples = read_jsonl(args.examples)
    if params["retrieval"] == NO_RETRIEVAL:
        examples = [{**ex, "docs": []} for ex in examples]
    template = PromptTemplate(args.prompt)
    generator = load_generator(args.model, params["generation"])
    predictions, metrics = evaluate(examples, generator, template, params)
    # Metrics last: their presence means the predictions are complete.
    write_jsonl(args.predictions, predictions)
    write_json(args.metrics, metrics)


def _generation(params: dict) -> dict:
    return {**GENERATION_DEFAULTS, **params.get("generation", {})}


def _generate_in_shards(args, params: dict, items: list[dict], inputs: list[str], generate):
    """A sharded, resumable generation stage: `generate(items, load_generator, template,
    params, work)` writes its shards to the node's work folder, dropped once the output
    and (last: their presence means the output is complete) the stats are written."""
    from ragtrain.core.workdir import finish, work_dir
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.engine import load_generator

    template = PromptTemplate(args.prompt)
    work = work_dir(args.work, params, inputs)
    records, stats = generate(
        items, lambda: load_generator(args.model, params["generation"]), template, params, work
    )
    write_jsonl(args.output, records)
    write_json(args.stats, stats)
    finish(work)
    log.info("%s: %s", args.stage, stats)


def cmd_self_demos(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.generation.selfdemo import sample_demos

    params = {**PRODUCT_DEFAULTS["self_demos"], "prompt": "rag", **args.params}
    params["generation"] = _generation(params)
    inputs = [args.model, args.examples, args.prompt]
    _generate_in_shards(args, params, read_jsonl(args.examples), inputs, sample_demos)


def cmd_judge(args) -> None:
    from ragtrain.core.records import iter_jsonl, require
    from ragtrain.generation.judge import assign_splits, judge_record, judge_stats

    judged = []
    for lineno, record in iter_jsonl(args.input):
        require(record, "answers", list, args.input, lineno)
        require(record, "samples", list, args.input, lineno)
        for sample in record["samples"]:
            if not isinstance(sample, dict) or not isinstance(sample.get("text"), str):
                raise RecordError(args.input, lineno, "every sample needs a string field 'text'")
        judged.append(judge_record(record))
    judged = assign_splits(judged, args.params)
    stats = judge_stats(judged)
    write_jsonl(args.output, judged)
    write_json(args.stats, stats)
    log.info("judge: %s", stats)


def _product(args, build) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.generation.products import by_split

    judged = read_jsonl(args.input)
    for i, record in enumerate(judged, start=1):
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


def cmd_train(args) -> None:
    import torch

    from ragtrain.training.sft_dpo import train

    if args.threads:
        torch.set_num_threads(args.threads)
    params = {"name": Path(args.output).name, **args.params}
    train(params, args.init, args.train, args.dev, args.output, args.work)


def _reward_model_dirs(values: list[str] | None) -> dict[str, str]:
    """`--reward-model NAME=FOLDER` arguments: the reward models the sources name."""
    dirs = {}
    for value in values or []:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--reward-model: expected NAME=FOLDER, got {value!r}")
        dirs[name] = folder
    return dirs


def _rewards(args, params: dict):
    from ragtrain.training.rewards import Rewards

    return Rewards(params["rewards"], _reward_model_dirs(args.reward_model))


def _threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def cmd_train_reward_model(args) -> None:
    from ragtrain.training.reward_model import train_reward_model

    _threads(args)
    params = {"name": Path(args.output).name, **args.params}
    train_reward_model(params, args.init, args.train, args.dev, args.output, args.work)


def _prompt_records(args, params: dict) -> tuple[list[dict], list[dict]]:
    """The examples with their rendered prompt, split into train and dev by a seeded hash."""
    from ragtrain.core.records import iter_jsonl, require
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.judge import dev_ids

    template = PromptTemplate(args.prompt)
    records = []
    for lineno, record in iter_jsonl(args.examples):
        require(record, "id", str, args.examples, lineno)
        require(record, "answers", list, args.examples, lineno)
        records.append({**record, "prompt": template.conversation(record)})
    held = dev_ids([r["id"] for r in records], params["dev_fraction"], params["seed"])
    return [r for r in records if r["id"] not in held], [r for r in records if r["id"] in held]


def cmd_train_rl(args) -> None:
    from ragtrain.core.workdir import finish, work_dir

    _threads(args)
    kind = args.params.get("kind")
    if kind not in ("ppo", "grpo", "rloo"):
        raise ValueError(f"--params: 'kind' must be ppo, grpo or rloo, got {kind!r}")
    params = {**MODEL_DEFAULTS[kind], "name": Path(args.output).name, **args.params}
    train, dev = _prompt_records(args, params)
    dirs = _reward_model_dirs(args.reward_model)
    if kind == "ppo":
        from ragtrain.training.ppo import train_ppo

        inputs = [args.init, args.examples, args.prompt, *dirs.values()]
        work = work_dir(args.work, params, inputs)
        metrics = train_ppo(
            params, args.init, train, dev, _rewards(args, params), args.output, work
        )
        finish(work)
    else:
        from ragtrain.training.group_rl import train_group_rl

        metrics = train_group_rl(params, args.init, train, args.output, args.work, dirs, dev)
    log.info("metrics: %s", metrics)


def cmd_reward(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.training.reward_model import RewardModelScorer

    params = {**PRODUCT_DEFAULTS["reward"], **args.params}
    records = read_jsonl(args.input)
    for i, record in enumerate(records, start=1):
        for field in ("prompt", "samples"):
            if field not in record:
                raise RecordError(args.input, i, f"no field {field!r} (expected sample records)")
    scorer = RewardModelScorer(args.reward_model_dir, batch_size=params["batch_size"])
    flat = [(r, s) for r in records for s in r["samples"]]
    scores = scorer.score([r["prompt"] for r, _ in flat], [s["text"] for _, s in flat])
    for (_, sample), score in zip(flat, scores, strict=True):
        sample["reward_model"] = round(score, 6)
    best = [max(s["reward_model"] for s in r["samples"]) for r in records if r["samples"]]
    stats = {
        "n_examples": len(records),
        "n_samples": len(flat),
        "reward_model": params.get("model"),
        "mean_reward": round(sum(scores) / len(scores), 4) if scores else None,
        "mean_best_reward": round(sum(best) / len(best), 4) if best else None,
    }
    write_jsonl(args.output, records)
    write_json(args.stats, stats)
    log.info("reward: %s", stats)


def _write_sft_product(args, records: list[dict], stats: dict) -> None:
    from ragtrain.training.rejection import split_records

    train, dev = split_records(records)
    if not train:
        raise ValueError(f"{args.stage}: no SFT records for training ({stats})")
    write_jsonl(args.train, train)
    write_jsonl(args.dev, dev)
    write_json(args.stats, {**stats, "n_train": len(train), "n_dev": len(dev)})
    log.info("%s: %d train, %d dev; %s", args.stage, len(train), len(dev), stats)


def cmd_best_of_n(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.core.workdir import finish, work_dir
    from ragtrain.training.rejection import best_of_n

    params = {**PRODUCT_DEFAULTS["best_of_n"], **args.params}
    reward_dirs = list(_reward_model_dirs(args.reward_model).values())
    work = work_dir(args.work, params, [args.input, *reward_dirs])
    records, stats = best_of_n(read_jsonl(args.input), _rewards(args, params), params, work)
    _write_sft_product(args, records, stats)
    finish(work)


def cmd_segment_beam(args) -> None:
    from functools import partial

    from ragtrain.core.records import read_jsonl
    from ragtrain.core.workdir import finish, work_dir
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.engine import load_generator
    from ragtrain.training.rejection import segment_beam_demos

    params = {**PRODUCT_DEFAULTS["segment_beam"], **args.params}
    params["generation"] = _generation(params)
    inputs = [
        args.model,
        args.examples,
        args.prompt,
        *_reward_model_dirs(args.reward_model).values(),
    ]
    work = work_dir(args.work, params, inputs)
    records, stats = segment_beam_demos(
        read_jsonl(args.examples),
        partial(load_generator, args.model, params["generation"]),
        PromptTemplate(args.prompt),
        params,
        work,
        load_rewards=partial(_rewards, args, params),
    )
    _write_sft_product(args, records, stats)
    finish(work)


def cmd_report(args) -> None:
    from ragtrain.evaluation.report import (
        load_retrieval_rows,
        load_rows,
        load_training,
        write_plot,
        write_summary,
        write_table,
        write_training_plot,
    )

    rows = load_rows(args.metrics)
    training = load_training(args.models)
    retrievers = load_retrieval_rows(args.retrieval_metrics, args.retrievers)
    write_table([*rows, *retrievers], Path(args.table))
    write_plot(rows or retrievers, Path(args.plot))
    write_training_plot(args.models, Path(args.training_plot))
    write_summary(
        rows, args.retrieval, args.run, Path(args.summary), training, args.products, retrievers
    )


def _gold_queries(queries_path: str, qrels_dir: str, split: str = "train") -> list[dict]:
    """The task's judged (query, passage) pairs of a split as query records."""
    from ragtrain.data.beir import load_queries
    from ragtrain.metrics.ir import read_qrels

    texts = {q["id"]: q["query"] for q in load_queries(queries_path)}
    path = Path(qrels_dir) / f"{split}.tsv"
    if not path.is_file():
        raise RecordError(path, None, f"the task has no {split} qrels")
    return [
        {"id": f"{qid}:{doc_id}" if len(docs) > 1 else qid, "doc_id": doc_id, "query": texts[qid]}
        for qid, docs in read_qrels(path).items()
        for doc_id, score in docs.items()
        if score > 0
    ]


def _passages(path: str) -> list[dict]:
    """A corpus: ours ({id, title, text}) or a BEIR corpus.jsonl (`_id`), checked."""
    from ragtrain.data.loaders import load_beir_corpus

    return load_beir_corpus(path)


def _query_records(path: str) -> list[dict]:
    from ragtrain.core.records import iter_jsonl, require

    records = []
    for lineno, record in iter_jsonl(path):
        for field in ("id", "doc_id", "query"):
            require(record, field, str, path, lineno)
        records.append(record)
    return records


def cmd_task(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.data.beir import check_task, load_folder, world_task, write_task

    params = args.params
    corpus = _passages(args.corpus)
    if args.entities:
        entities = {e.pop("id"): e for e in read_jsonl(args.entities)}
        queries, qrels = world_task(entities, params["queries"], params["seed"])
        source = args.entities
    else:
        queries, qrels = load_folder(args.folder, params["splits"])
        source = args.folder
    check_task(queries, qrels, {p["id"] for p in corpus}, source)
    stats = write_task(queries, qrels, Path(args.queries), Path(args.qrels), Path(args.stats))
    log.info("task: %s", stats)


def cmd_query_sft_data(args) -> None:
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.pseudo_query import query_sft_data

    if args.input:
        queries, source = _query_records(args.input), args.input
    else:
        queries, source = _gold_queries(args.queries, args.qrels), f"{args.qrels}/train.tsv"
    train, dev, stats = query_sft_data(
        queries, _passages(args.corpus), PromptTemplate(args.prompt), args.params, source
    )
    write_jsonl(args.train, train)
    write_jsonl(args.dev, dev)
    write_json(args.stats, stats)
    log.info("query-sft-data: %s", stats)


def cmd_pseudo_queries(args) -> None:
    from ragtrain.generation.pseudo_query import (
        PSEUDO_QUERY_DEFAULTS,
        generate_queries,
        unlabelled_sample,
    )
    from ragtrain.metrics.ir import read_qrels

    params = {**PSEUDO_QUERY_DEFAULTS, **args.params}
    params["generation"] = _generation(params)
    train = Path(args.qrels) / "train.tsv"
    labelled = (
        {d for docs in read_qrels(train).values() for d in docs} if train.is_file() else set()
    )
    passages = unlabelled_sample(_passages(args.corpus), labelled, params["docs"], params["seed"])
    inputs = [args.model, args.corpus, args.prompt]
    _generate_in_shards(args, params, passages, inputs, generate_queries)


def _trained(model_dir: str) -> str:
    """A trained retriever's model: `<folder>/model`, beside its metrics.json."""
    return str(Path(model_dir) / "model")


def _settings(params: dict, defaults: dict) -> dict:
    """The keys a library function reads: a node also carries its kind, sources, etc."""
    return {k: v for k, v in params.items() if k in defaults or k == "seed"}


def cmd_query_filter(args) -> None:
    from ragtrain.graph.config import FILTER_KINDS

    params = args.params
    kind = params.get("filter")
    if kind not in FILTER_KINDS:
        raise ValueError(f"--params: 'filter' must be one of {sorted(FILTER_KINDS)}")
    records, corpus = _query_records(args.input), _passages(args.corpus)
    if kind == "lossnet":
        from ragtrain.retrieval.lossnet import lossnet_filter

        settings = _settings(params, FILTER_KINDS["lossnet"])
        # The current retriever: a trained one, else the untrained encoder.
        retriever = (
            _trained(args.retriever)
            if args.retriever
            else settings.get("encoder", FILTER_KINDS["lossnet"]["encoder"])
        )
        gold = _gold_queries(args.queries, args.qrels) if args.queries else None
        out, stats = lossnet_filter(records, corpus, retriever, settings, gold=gold)
    else:
        from ragtrain.retrieval.query_filters import filter_queries

        out, stats = filter_queries(
            records, corpus, {**_settings(params, FILTER_KINDS[kind]), "filter": kind}
        )
    stats = {"filter": kind, **stats}
    write_jsonl(args.output, out)
    write_json(args.stats, stats)
    log.info("query-filter (%s): %s", kind, stats)


def cmd_query_preferences(args) -> None:
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.pseudo_query import (
        PREFERENCE_DEFAULTS,
        preference_pairs,
        with_difficulty,
    )
    from ragtrain.retrieval.retriever_training import search

    params = {**PREFERENCE_DEFAULTS, **args.params}
    corpus = _passages(args.corpus)
    queries = with_difficulty(
        _query_records(args.input),
        lambda texts, k: search("biencoder", _trained(args.retriever), corpus, texts, k),
        min(params["depth"], len(corpus)),
    )
    train, dev, stats = preference_pairs(
        queries, corpus, PromptTemplate(args.prompt), params, args.input
    )
    write_jsonl(args.output, queries)
    write_jsonl(args.train, train)
    write_jsonl(args.dev, dev)
    write_json(args.stats, stats)
    log.info("query-preferences: %s", stats)


def cmd_train_retriever(args) -> None:
    import torch

    from ragtrain.core.records import atomic_dir
    from ragtrain.retrieval.retriever_training import (
        BIENCODER_DEFAULTS,
        COLBERT_DEFAULTS,
        hard_negative_triples,
        train_biencoder,
        train_colbert,
        training_pairs,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    params = args.params
    kind = params.get("kind")
    if kind not in ("biencoder", "colbert"):
        raise ValueError("--params: 'kind' must be biencoder or colbert")
    corpus = _passages(args.corpus)
    gold = _gold_queries(args.queries, args.qrels)
    pseudo = [r for path in args.pseudo for r in _query_records(path) if r.get("kept", True)]
    queries = gold + pseudo
    with atomic_dir(args.output) as tmp:
        if kind == "biencoder":
            settings = _settings(params, BIENCODER_DEFAULTS)
            metrics = train_biencoder(training_pairs(queries, corpus), settings, tmp / "model")
        else:
            settings = _settings(params, COLBERT_DEFAULTS)
            triples = hard_negative_triples(queries, corpus, settings)
            metrics = train_colbert(triples, settings, tmp / "model")
        metrics = {"kind": kind, **metrics, "n_gold": len(gold), "n_pseudo": len(pseudo)}
        write_json(tmp / "metrics.json", metrics)
    log.info("train-retriever (%s): %s", kind, metrics)


def cmd_evaluate_retrieval(args) -> None:
    from ragtrain.core.records import read_json
    from ragtrain.data.beir import load_queries
    from ragtrain.metrics.ir import evaluate_run, read_qrels, read_run, write_run
    from ragtrain.retrieval.index import Index
    from ragtrain.retrieval.retriever_training import search

    params = args.params
    split, k = params.get("split", "test"), params.get("k", 100)
    qrels = read_qrels(Path(args.qrels) / f"{split}.tsv")
    texts = {q["id"]: q["query"] for q in load_queries(args.queries) if q["id"] in qrels}
    corpus = _passages(args.corpus)
    if args.index:
        index = Index(args.index)
        qids = list(texts)
        hits = index.search([texts[q] for q in qids], k)
        run = {
            q: {index.corpus[i]["id"]: s for i, s in ranked}
            for q, ranked in zip(qids, hits, strict=True)
        }
        kind = index.params["kind"]
    else:
        kind = read_json(Path(args.model) / "metrics.json")["kind"]
        if kind == "colbert" and not args.candidates:
            raise ValueError("a ColBERT reranks a first-stage run: give --candidates")
        candidates = read_run(args.candidates) if args.candidates else None
        run = search(kind, _trained(args.model), corpus, texts, k, candidates=candidates)
    metrics = evaluate_run(qrels, run)
    write_run(args.run, run)
    write_json(
        args.metrics,
        {"retriever": params.get("retriever", Path(args.model or args.index).name),
         "kind": kind, "dataset": params.get("dataset"), "split": split, **metrics},
    )  # fmt: skip
    log.info("evaluate-retrieval: %s", metrics)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ragtrain", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")

    def stage(name, func, help_, params=True):
        p = stages.add_parser(name, help=help_, description=help_)
        if params:
            p.add_argument(
                "--params",
                type=_params,
                default={},
                help="the node's config as JSON or @file.json; keys left out take their"
                " defaults (config/README.md)",
            )
        p.set_defaults(func=func)
        return p

    p = stage("world", cmd_world, "generate a synthetic fictional world: corpus and questions")
    p.add_argument("--corpus", required=True, help="output passages (JSONL)")
    p.add_argument("--questions", required=True, help="output questions of every split (JSONL)")
    p.add_argument("--stats", required=True, help="output counts (JSON)")

    p.add_argument("--entities", help="output: each passage's entity (JSONL), for retrieval tasks")

    p = stage(
        "task",
        cmd_task,
        "a retrieval task: queries and qrels from a BEIR folder, or synthetic over a world",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--entities", help="a world's entities.jsonl (synthetic task)")
    source.add_argument("--folder", help="a BEIR folder (queries.jsonl, qrels/<split>.tsv)")
    p.add_argument("--corpus", required=True, help="the task's passages (ids are checked)")
    p.add_argument("--queries", required=True, help="output queries {id, query} (JSONL)")
    p.add_argument("--qrels", required=True, help="output folder of <split>.tsv")
    p.add_argument("--stats", required=True)

    p = stage(
        "query-sft-data",
        cmd_query_sft_data,
        "doc -> query SFT data from a task's gold train pairs or from kept pseudo-queries",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="query records (JSONL); those kept are used")
    source.add_argument("--queries", help="the task's queries.jsonl (with --qrels)")
    p.add_argument("--qrels", help="the task's qrels folder (train.tsv is used)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--prompt", required=True, help="Jinja template of the user turn")
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)

    def reward_models(p):
        p.add_argument(
            "--reward-model",
            action="append",
            metavar="NAME=FOLDER",
            help="a trained reward model the `rewards` sources name (repeatable)",
        )

    p = stage(
        "train-reward-model",
        cmd_train_reward_model,
        "train a reward model on preference pairs (TRL RewardTrainer, LoRA or full)",
    )
    p.add_argument("--init", required=True, help="the model folder to start from")
    p.add_argument("--train", required=True, help="pairs {id, prompt, chosen, rejected}")
    p.add_argument("--dev", required=True, help="held-out pairs (pair accuracy)")
    p.add_argument("--work", required=True, help="work folder root (checkpoints; resumed)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--output", required=True, help="the reward model's folder")

    p = stage(
        "train-rl",
        cmd_train_rl,
        "RL from reward sources: PPO (ours, per-token rewards), GRPO or RLOO (TRL)",
    )
    p.add_argument("--init", required=True, help="the policy's starting model folder")
    p.add_argument("--examples", required=True, help="questions with their documents (JSONL)")
    p.add_argument("--prompt", required=True, help="Jinja template of the user turn")
    reward_models(p)
    p.add_argument("--work", required=True, help="work folder root (checkpoints; resumed)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--output", required=True, help="the trained model's folder")

    p = stage("reward", cmd_reward, "score every sample of a generation product")
    p.add_argument("--input", required=True, help="sample records (self-demos, judged)")
    p.add_argument("--reward-model-dir", required=True, help="a trained reward model")
    p.add_argument("--output", required=True, help="the records, each sample with reward_model")
    p.add_argument("--stats", required=True)

    p = stage("best-of-n", cmd_best_of_n, "SFT data: each question's best sample by reward")
    p.add_argument("--input", required=True, help="sample records (self-demos, judged, scored)")
    reward_models(p)
    p.add_argument("--work", required=True, help="work folder root (scored shards; resumed)")
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)

    p = stage(
        "segment-beam",
        cmd_segment_beam,
        "SFT data: answers grown sentence by sentence, the best partial answers kept by reward",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--examples", required=True, help="questions with their documents (JSONL)")
    p.add_argument("--prompt", required=True)
    reward_models(p)
    p.add_argument("--work", required=True, help="work folder root (shards; resumed)")
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)

    p = stage(
        "pseudo-queries",
        cmd_pseudo_queries,
        "per_doc queries for a sample of unlabelled passages (sharded, resumable)",
    )
    p.add_argument("--model", required=True, help="the query writer's folder")
    p.add_argument("--corpus", required=True)
    p.add_argument("--qrels", required=True, help="the task's qrels folder (train: labelled)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--work", required=True, help="work folder root (shards; resumed)")
    p.add_argument("--output", required=True, help="query records (JSONL)")
    p.add_argument("--stats", required=True)

    p = stage(
        "query-filter",
        cmd_query_filter,
        "rank each query's source passage (BM25, dense) or predict its loss (LossNet); keep some",
    )
    p.add_argument("--input", required=True, help="query records (JSONL)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--queries", help="the task's queries (LossNet: gold examples)")
    p.add_argument("--qrels", help="the task's qrels folder (LossNet: gold examples)")
    p.add_argument("--retriever", help="LossNet: the current retriever's folder")
    p.add_argument("--output", required=True, help="query records with filters and kept")
    p.add_argument("--stats", required=True)

    p = stage(
        "query-preferences",
        cmd_query_preferences,
        "difficulty under a trained retriever; pairs of kept over dropped queries, easy to hard",
    )
    p.add_argument("--input", required=True, help="filtered query records (JSONL)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--retriever", required=True, help="a trained bi-encoder's folder")
    p.add_argument("--prompt", required=True, help="the doc -> query template")
    p.add_argument("--output", required=True, help="query records with difficulty")
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)

    p = stage(
        "train-retriever",
        cmd_train_retriever,
        "a bi-encoder (in-batch negatives) or ColBERT (PyLate) on gold plus kept pseudo-queries",
    )
    p.add_argument("--corpus", required=True)
    p.add_argument("--queries", required=True, help="the task's queries.jsonl")
    p.add_argument("--qrels", required=True, help="the task's qrels folder (train.tsv)")
    p.add_argument("--pseudo", nargs="*", default=[], help="query records (JSONL); kept used")
    p.add_argument("--output", required=True, help="model folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")

    p = stage(
        "evaluate-retrieval",
        cmd_evaluate_retrieval,
        "rank a task's queries; nDCG@10, MAP@10, Recall@100, MRR@10 (BEIR's way)",
    )
    ranker = p.add_mutually_exclusive_group(required=True)
    ranker.add_argument("--index", help="an index folder (BM25 or dense, untrained)")
    ranker.add_argument("--model", help="a trained retriever's folder")
    p.add_argument("--candidates", help="ColBERT: the first-stage run to rerank (TREC)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--qrels", required=True, help="the task's qrels folder")
    p.add_argument("--run", required=True, help="output run (TREC)")
    p.add_argument("--metrics", required=True)

    p = stage("corpus", cmd_corpus, "normalise a BEIR corpus.jsonl into passages {id, title, text}")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)

    p = stage("dataset", cmd_dataset, "load QA examples (world split, NQ-open, FlashRAG, ragtrain)")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="examples.jsonl")
    p.add_argument("--stats", required=True, help="stats.json")

    p = stage(
        "index", cmd_index, "build a BM25 (bm25s) or dense (sentence-transformers + FAISS) index"
    )
    p.add_argument("--corpus", required=True)
    p.add_argument("--output", required=True, help="index folder")

    p = stage(
        "retrieve", cmd_retrieve, "attach the top-k passages to each example; recall@k to stats"
    )
    p.add_argument("--index", required=True)
    p.add_argument("--examples", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--stats", required=True)

    p = stage(
        "base-model",
        cmd_base_model,
        "import a base model (GGUF, local folder or hub id) as safetensors",
    )
    p.add_argument("--output", required=True, help="model folder")

    p = stage(
        "evaluate", cmd_evaluate, "greedy RAG answers for a dataset, scored (EM, F1, refusals)"
    )
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--examples", required=True)
    p.add_argument("--prompt", required=True, help="Jinja template of the user turn")
    p.add_argument("--predictions", required=True)
    p.add_argument("--metrics", required=True)

    p = stage(
        "self-demos",
        cmd_self_demos,
        "sample n responses per question with the RAG prompt (sharded, resumable)",
    )
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--examples", required=True, help="examples with retrieved docs")
    p.add_argument("--prompt", required=True, help="Jinja template of the user turn")
    p.add_argument("--work", required=True, help="work folder root (shards; resumed)")
    p.add_argument("--output", required=True, help="sample records (JSONL)")
    p.add_argument("--stats", required=True)

    p = stage(
        "judge",
        cmd_judge,
        "label each sample correct / incorrect / refuse, hold out dev questions; counts to stats",
    )
    p.add_argument("--input", required=True, help="sample records (JSONL)")
    p.add_argument("--output", required=True, help="judged records (JSONL)")
    p.add_argument("--stats", required=True)

    for name, func, help_ in (
        ("sft-data", cmd_sft_data, "SFT data (prompt, completion) from judged samples"),
        (
            "preference-pairs",
            cmd_preference_pairs,
            "DPO pairs (prompt, chosen, rejected) from judged samples",
        ),
    ):
        p = stage(name, func, help_)
        p.add_argument("--input", required=True, help="judged records (JSONL)")
        p.add_argument("--train", required=True, help="output train split (JSONL)")
        p.add_argument("--dev", required=True, help="output held-out split (JSONL)")
        p.add_argument("--stats", required=True)

    p = stage("train", cmd_train, "SFT or DPO with TRL (LoRA or full); saves a merged model")
    p.add_argument("--init", required=True, help="the model folder training starts from")
    p.add_argument("--train", required=True, help="training records (JSONL)")
    p.add_argument("--dev", help="held-out records (JSONL)")
    p.add_argument("--work", required=True, help="work folder root (checkpoints; resumed)")
    p.add_argument("--output", required=True, help="model folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")

    p = stage(
        "report",
        cmd_report,
        "summary.md, summary.csv, a bar chart of the evaluations, the training curves",
        params=False,
    )
    p.add_argument("--run", required=True, help="the run's name, for the title")
    p.add_argument("--metrics", nargs="*", default=[], help="QA evaluation metrics.json files")
    p.add_argument(
        "--retrieval-metrics", nargs="*", default=[], help="retrieval evaluation metrics.json"
    )
    p.add_argument("--retrievers", nargs="*", default=[], help="trained retriever folders")
    p.add_argument("--retrieval", nargs="*", default=[], help="retrieval stats.json files")
    p.add_argument("--models", nargs="*", default=[], help="trained model folders")
    p.add_argument("--products", nargs="*", default=[], help="product stats.json files")
    p.add_argument("--summary", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--training-plot", required=True, help="training curves (PNG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Tokens come from the environment only; their values never reach a log.
    install_redaction()
    try:
        args.func(args)
    except (ValueError, OSError) as e:
        # Bad input or settings (RecordError is a ValueError): one line that says where
        # and what; the traceback only with --verbose.
        log.debug("traceback", exc_info=True)
        print(f"ragtrain {args.stage}: error: {redact(str(e))}", file=sys.stderr)
        return 1
    except KeyError as e:
        log.debug("traceback", exc_info=True)
        print(f"ragtrain {args.stage}: error: --params lacks the key {e}", file=sys.stderr)
        return 1
    return 0


# The vLLM engine spawns processes that re-import the main module: keep the guard.
if __name__ == "__main__":
    sys.exit(main())
