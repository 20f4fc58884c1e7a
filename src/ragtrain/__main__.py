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

from ragtrain.config import GENERATION_DEFAULTS, MODEL_DEFAULTS, NO_RETRIEVAL, RETRIEVER_DEFAULTS
from ragtrain.records import RecordError, write_json, write_jsonl

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
    from ragtrain.world import WorldConfig, generate_world, write_world

    world = generate_world(WorldConfig.from_dict(args.params))
    write_world(world, args.corpus, args.questions, args.stats)
    n_questions = sum(len(examples) for examples in world.splits.values())
    log.info("world: %d passages, %d questions", len(world.passages), n_questions)


def cmd_corpus(args) -> None:
    from ragtrain.loaders import load_beir_corpus

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
    from ragtrain.loaders import load_qa

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
    from ragtrain.records import read_jsonl
    from ragtrain.retrieval import build_index

    corpus = read_jsonl(args.corpus)
    build_index(corpus, _retriever(args.params), Path(args.output))
    log.info("index: %s over %d passages", args.params["kind"], len(corpus))


def cmd_retrieve(args) -> None:
    from ragtrain.records import read_jsonl
    from ragtrain.retrieval import Index, retrieve

    index = Index(args.index)
    k = _retriever({**index.params, **args.params})["k"]
    examples, stats = retrieve(read_jsonl(args.examples), index, k)
    write_jsonl(args.output, examples)
    write_json(args.stats, stats)
    log.info("retrieve: %s", stats)


def cmd_base_model(args) -> None:
    from ragtrain.models import import_base_model

    import_base_model({**MODEL_DEFAULTS["base"], **args.params}, args.output)


def cmd_evaluate(args) -> None:
    from ragtrain.evaluate import evaluate
    from ragtrain.generation import load_generator
    from ragtrain.prompts import PromptTemplate
    from ragtrain.records import read_jsonl

    params = {
        "model": Path(args.model).name,
        "dataset": Path(args.examples).parent.name,
        "retrieval": "given",
        **args.params,
    }
    params["generation"] = {**GENERATION_DEFAULTS, **params.get("generation", {})}
    examples = read_jsonl(args.examples)
    if params["retrieval"] == NO_RETRIEVAL:
        examples = [{**ex, "docs": []} for ex in examples]
    template = PromptTemplate(args.prompt)
    generator = load_generator(args.model, params["generation"])
    predictions, metrics = evaluate(examples, generator, template, params)
    # Metrics last: their presence means the predictions are complete.
    write_jsonl(args.predictions, predictions)
    write_json(args.metrics, metrics)


def cmd_report(args) -> None:
    from ragtrain.report import load_rows, write_plot, write_summary, write_table

    rows = load_rows(args.metrics)
    write_table(rows, Path(args.table))
    write_plot(rows, Path(args.plot))
    write_summary(rows, args.retrieval, args.run, Path(args.summary))


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
        "report",
        cmd_report,
        "summary.md, summary.csv and a bar chart of the evaluations",
        params=False,
    )
    p.add_argument("--run", required=True, help="the run's name, for the title")
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--retrieval", nargs="*", default=[])
    p.add_argument("--summary", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--plot", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except (ValueError, OSError) as e:
        # Bad input or settings (RecordError is a ValueError): one line that says where
        # and what; the traceback only with --verbose.
        log.debug("traceback", exc_info=True)
        print(f"ragtrain {args.stage}: error: {e}", file=sys.stderr)
        return 1
    except KeyError as e:
        log.debug("traceback", exc_info=True)
        print(f"ragtrain {args.stage}: error: --params lacks the key {e}", file=sys.stderr)
        return 1
    return 0


# The vLLM engine spawns processes that re-import the main module: keep the guard.
if __name__ == "__main__":
    sys.exit(main())
