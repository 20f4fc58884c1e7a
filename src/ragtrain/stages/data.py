"""Data stages: a synthetic world, retrieval tasks, corpora and QA datasets."""

from __future__ import annotations

from pathlib import Path

from ragtrain.core.records import write_json, write_jsonl
from ragtrain.stages.common import add_stage, log, peak_rss


def cmd_world(args) -> None:
    from ragtrain.data.world import WorldConfig, generate_world, write_world

    world = generate_world(WorldConfig.from_dict(args.params))
    write_world(world, args.corpus, args.questions, args.stats, args.entities)
    n_questions = sum(len(examples) for examples in world.splits.values())
    log.info("world: %d passages, %d questions", len(world.passages), n_questions)


def cmd_task(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.data.beir import check_task, load_folder, world_task, write_task
    from ragtrain.data.passages import ids_in_corpus

    params = args.params
    if args.entities:
        entities = {e.pop("id"): e for e in read_jsonl(args.entities)}
        queries, qrels = world_task(entities, params["queries"], params["seed"])
        source = args.entities
    else:
        queries, qrels = load_folder(args.folder, params["splits"])
        source = args.folder
    # Only the judged passages' ids are looked up (the corpus's id table, or a stream).
    judged = {d for by_query in qrels.values() for docs in by_query.values() for d in docs}
    check_task(queries, qrels, ids_in_corpus(args.corpus, judged), source)
    stats = write_task(queries, qrels, Path(args.queries), Path(args.qrels), Path(args.stats))
    log.info("task: %s", stats)


def cmd_corpus(args) -> None:
    from ragtrain.data.loaders import write_corpus

    # A world's passages are in our own shape, whatever `format` says.
    fmt = "beir" if args.params.get("world") else args.params.get("format", "beir")
    # Streamed: the offsets and id tables are written beside the output.
    n = write_corpus(args.input, fmt, args.output)
    log.info("corpus: %d passages (%s), %s", n, fmt, peak_rss())


def cmd_dataset(args) -> None:
    from ragtrain.data.loaders import dataset_stats, load_dataset

    examples = load_dataset(args.input, args.params)
    write_jsonl(args.output, examples)
    write_json(args.stats, dataset_stats(examples))
    log.info("dataset: %d examples", len(examples))


def register(stages) -> None:
    p = add_stage(
        stages, "world", cmd_world, "generate a synthetic fictional world: corpus and questions"
    )
    p.add_argument("--corpus", required=True, help="output passages (JSONL)")
    p.add_argument("--questions", required=True, help="output questions of every split (JSONL)")
    p.add_argument("--stats", required=True, help="output counts (JSON)")
    p.add_argument("--entities", help="output: each passage's entity (JSONL), for retrieval tasks")

    p = add_stage(
        stages,
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

    p = add_stage(
        stages,
        "corpus",
        cmd_corpus,
        "normalise a corpus (BEIR, FlashRAG, or our own) into passages {id, title, text}",
    )
    p.add_argument("--input", required=True)
    p.add_argument(
        "--output",
        required=True,
        help="passages (JSONL); <name>.offsets.npy and <name>.ids.npy are written beside it",
    )

    p = add_stage(
        stages,
        "dataset",
        cmd_dataset,
        "load QA examples (world split, NQ-open, FlashRAG, KILT / RA-DIT, ALCE, ragtrain)",
    )
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="examples.jsonl")
    p.add_argument("--stats", required=True, help="stats.json")
