"""What every stage's command line shares: `--params`, the stage helper, shared options.

A stage module declares its stages with `add_stage` next to their command functions;
the options several stages take (`--reward-model NAME=FOLDER`) and the small
conversions between their arguments and the domain functions live here.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path

from ragtrain.core.settings import merge
from ragtrain.graph.kinds import GENERATION_DEFAULTS

# Every stage logs as `ragtrain`, whichever module declares it.
log = logging.getLogger("ragtrain")

PARAMS_HELP = (
    "the node's config as JSON or @file.json; keys left out take their defaults (config/README.md)"
)


# The corpus stage's passages: read by id and row through its tables beside the file (a
# file without them, e.g. a BEIR corpus.jsonl, is normalised into a temporary copy).
CORPUS_HELP = "passages (JSONL), with the corpus stage's offsets and id tables beside it"

JUDGE_HELP = (
    "a model judge's node as JSON, with its `name` and raw-output `cache` file; without,"
    " the string rules"
)


def add_judge(p: argparse.ArgumentParser, required: bool = False) -> None:
    """`--judge` (a model judge's node), `--judge-model` and `--judge-prompt`."""
    p.add_argument("--judge", type=params_json, required=required, help=JUDGE_HELP)
    p.add_argument("--judge-model", help="the judge's model folder")
    p.add_argument("--judge-prompt", help="the judge's Jinja template")


def model_judge(args, engines=None):
    """The model judge a stage's `--judge` options describe (None: the rules). With
    `engines` (ragtrain.generation.calls.Engines), an engine the stage loads anyway for
    the same model and settings serves the judge too."""
    if not args.judge:
        return None
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.engine import Sampling, load_generator
    from ragtrain.judges.model import ModelJudge, RawCache, check_judge, model_fingerprint

    node = args.judge
    if not args.judge_model or not args.judge_prompt:
        raise ValueError("--judge needs --judge-model and --judge-prompt")
    problem = check_judge(node["kind"], node, args.judge_prompt)
    if problem:
        raise ValueError(f"judge {node['name']!r}: {problem}")
    settings = generation(node)
    return ModelJudge(
        node["kind"],
        node,
        (
            engines.loader(args.judge_model, settings)
            if engines
            else lambda: load_generator(args.judge_model, settings)
        ),
        PromptTemplate(args.judge_prompt),
        Sampling.from_params({**settings, "max_new_tokens": node["max_new_tokens"]}),
        model_fingerprint(args.judge_model),
        RawCache(node.get("cache")),
    )


def named_paths(values: list[str] | None, option: str) -> dict[str, str]:
    """`NAME=PATH` arguments (repeatable options) as a mapping."""
    found = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option}: expected NAME=PATH, got {value!r}")
        found[name] = path
    return found


def params_json(value: str) -> dict:
    """The `--params` type: a JSON object given inline or as `@file.json`."""
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


def add_stage(
    stages: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], None],
    help_: str,
    params: bool = True,
) -> argparse.ArgumentParser:
    """A stage's parser: its help, `--params` (unless the stage takes none) and the
    command function `main` dispatches to."""
    p = stages.add_parser(name, help=help_, description=help_)
    if params:
        p.add_argument("--params", type=params_json, default={}, help=PARAMS_HELP)
    p.set_defaults(func=_checked(name, func))
    return p


def _checked(stage: str, func: Callable[[argparse.Namespace], None]):
    """`func`, after what every stage does first: it ends with the Snakemake process that
    runs its job (ragtrain.launch.die_with_scheduler), and its `--params` pass the
    config's checks (a wrong type is a ValueError naming the key: one line, status 1)."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> None:
        from ragtrain.graph.config import check_params
        from ragtrain.launch import die_with_scheduler

        die_with_scheduler()
        if isinstance(getattr(args, "params", None), dict):
            check_params(stage, args.params)
        func(args)

    return run


def add_reward_models(p: argparse.ArgumentParser) -> None:
    """`--reward-model NAME=FOLDER` and `--nli`: what a stage's `rewards` sources read."""
    p.add_argument(
        "--reward-model",
        action="append",
        metavar="NAME=FOLDER",
        help="a trained reward model the `rewards` sources name (repeatable)",
    )
    add_nli(p, "the NLI judges the `rewards` sources name")


def add_nli(p: argparse.ArgumentParser, help_: str) -> None:
    p.add_argument(
        "--nli",
        type=params_json,
        default={},
        help=f"{help_}: JSON {{name: judge node with `path`, its model's folder}}",
    )


def reward_model_dirs(values: list[str] | None) -> dict[str, str]:
    """`--reward-model NAME=FOLDER` arguments: the reward models the sources name."""
    return named_paths(values, "--reward-model")


def reward_input_dirs(args: argparse.Namespace) -> list[str]:
    """The folders the rewards read (a work folder's fingerprint covers them)."""
    nli = [node["path"] for node in (args.nli or {}).values()]
    ranking = named_paths(getattr(args, "retriever", None), "--retriever").values()
    return [*reward_model_dirs(args.reward_model).values(), *nli, *ranking]


def entailments(nodes: dict) -> dict:
    """`--nli` judges as `Entailment`s (ragtrain.judges.nli), each model loaded when it
    is first asked."""
    from ragtrain.judges.nli import Entailment, LazyScorer

    return {
        name: Entailment(LazyScorer(node), node.get("threshold", 0.5))
        for name, node in (nodes or {}).items()
    }


def rewards(args: argparse.Namespace, params: dict, corpus: list[dict] | None = None):
    """The reward sources of `params["rewards"]`, with the reward models, NLI judges and
    retrievers given (`--retriever`, with `corpus`: what retrieval_rank ranks)."""
    from ragtrain.training.rewards import Rewards

    return Rewards(
        params["rewards"],
        reward_model_dirs(args.reward_model),
        nli=entailments(args.nli),
        retrievers=named_paths(getattr(args, "retriever", None), "--retriever"),
        corpus=corpus,
    )


def peak_rss() -> str:
    """This process's peak resident memory (the kernel's count, as `/usr/bin/time -v`
    gives it; worker processes not included), for the log of a stage whose memory could
    grow with the corpus."""
    import resource

    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def set_threads(threads: int) -> None:
    """`--threads`: torch's intra-op threads (0: torch's choice)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def generation(params: dict) -> dict:
    """A generating node's `generation` settings over the defaults."""
    return merge(GENERATION_DEFAULTS, params.get("generation", {}))


def trained_retriever(model_dir: str) -> str:
    """A trained retriever's model: `<folder>/model`, beside its metrics.json."""
    return str(Path(model_dir) / "model")


def settings_of(params: dict, defaults: dict) -> dict:
    """The keys a library function reads: a node also carries its kind, sources, etc."""
    return {k: v for k, v in params.items() if k in defaults or k == "seed"}


def write_split(args, records: list[dict], stats: dict, what: str, empty_ok: bool = False) -> None:
    """Records with their `split` to --train / --dev (the split field dropped), --stats
    last (its presence says the product is complete). No training record is an error
    unless `empty_ok`."""
    from ragtrain.core.records import write_json, write_jsonl
    from ragtrain.training.rejection import split_records

    train, dev = (
        [{k: v for k, v in r.items() if k != "split"} for r in part]
        for part in split_records(records)
    )
    if not train and not empty_ok:
        raise ValueError(f"{args.stage}: no {what} for training ({stats})")
    if not train:
        log.warning("%s: no %s for training", args.stage, what)
    write_jsonl(args.train, train)
    write_jsonl(args.dev, dev)
    write_json(args.stats, {**stats, "n_train": len(train), "n_dev": len(dev)})
    log.info("%s: %d train, %d dev; %s", args.stage, len(train), len(dev), stats)
