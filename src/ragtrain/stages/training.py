"""Model stages: the base model's import, SFT / DPO, reward models and RL from rewards."""

from __future__ import annotations

from pathlib import Path

from ragtrain.core.settings import merge
from ragtrain.graph.kinds import MODEL_DEFAULTS, SOURCE_RETRIEVAL
from ragtrain.stages.common import (
    add_reward_models,
    add_stage,
    entailments,
    log,
    reward_input_dirs,
    reward_model_dirs,
    rewards,
    set_threads,
)

RL_KINDS = ("ppo", "grpo", "rloo")


def cmd_base_model(args) -> None:
    from ragtrain.training.models import import_base_model

    # `kind` may be left out when the stage runs alone: the base model's defaults.
    import_base_model(merge(MODEL_DEFAULTS["base"], args.params), args.output)


def cmd_train(args) -> None:
    from ragtrain.training.sft_dpo import train
    from ragtrain.training.tracking import stage_params

    set_threads(args.threads)
    params = stage_params(args.params, args.output)
    train(params, args.init, args.train, args.dev, args.output, args.work)


def cmd_train_reward_model(args) -> None:
    from ragtrain.training.reward_model import train_reward_model
    from ragtrain.training.tracking import stage_params

    set_threads(args.threads)
    params = stage_params(args.params, args.output)
    train_reward_model(params, args.init, args.train, args.dev, args.output, args.work)


def cmd_train_rl(args) -> None:
    from contextlib import ExitStack

    from ragtrain.core.workdir import finish, work_dir
    from ragtrain.data.passages import open_corpus
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.judge import prompt_records
    from ragtrain.training.tracking import stage_params

    set_threads(args.threads)
    kind = args.params.get("kind")
    if kind not in RL_KINDS:
        raise ValueError(f"--params: 'kind' must be ppo, grpo or rloo, got {kind!r}")
    params = merge(MODEL_DEFAULTS[kind], stage_params(args.params, args.output))
    if bool(args.examples) == bool(args.corpus):
        raise ValueError("train-rl: give --examples (QA prompts) or --corpus (passage prompts)")
    with ExitStack() as stack:
        corpus = None
        if args.corpus:
            if kind != "ppo":
                raise ValueError(f"train-rl: passage prompts (--corpus) are for ppo, not {kind}")
            # Open for the job: a retrieval_rank reward reads its rows by id.
            corpus = stack.enter_context(open_corpus(args.corpus))
            train, dev = passage_records(args, params, corpus)
        else:
            train, dev = prompt_records(
                args.examples,
                PromptTemplate(args.prompt),
                params["dev_fraction"],
                params["seed"],
                source_docs=params.get("retrieval") == SOURCE_RETRIEVAL,
            )
        if kind == "ppo":
            from ragtrain.training.ppo import train_ppo

            prompts = [args.examples] if args.examples else [args.corpus, args.qrels]
            inputs = [args.init, *prompts, args.prompt, *reward_input_dirs(args)]
            work = work_dir(args.work, params, inputs)
            sources = rewards(args, params, corpus=corpus)
            metrics = train_ppo(params, args.init, train, dev, sources, args.output, work)
            finish(work)
        else:
            from ragtrain.training.group_rl import train_group_rl

            metrics = train_group_rl(
                params,
                args.init,
                train,
                args.output,
                args.work,
                reward_model_dirs(args.reward_model),
                dev,
                entailments(args.nli),
            )
    log.info("metrics: %s", metrics)


def passage_records(args, params: dict, corpus) -> tuple[list[dict], list[dict]]:
    """PPO over a BEIR task's passages (a query writer): a seeded sample of `docs`
    passages of the corpus that no train query judges (the sample pseudo-queries of the
    same `docs` and seed take), each one's doc -> query prompt, split as QA prompts are."""
    from ragtrain.data.passages import sample_passages
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.judge import dev_ids
    from ragtrain.generation.pseudo_query import passage_prompts
    from ragtrain.metrics.ir import read_qrels

    if not args.qrels:
        raise ValueError("train-rl: --corpus needs --qrels (its train pairs are labelled)")
    train_qrels = Path(args.qrels) / "train.tsv"
    labelled = (
        {d for docs in read_qrels(train_qrels).values() for d in docs}
        if train_qrels.is_file()
        else set()
    )
    n = params.get("docs") or len(corpus)
    records = passage_prompts(
        sample_passages(corpus, labelled, n, params["seed"]), PromptTemplate(args.prompt)
    )
    held = dev_ids([r["id"] for r in records], params["dev_fraction"], params["seed"])
    train = [r for r in records if r["id"] not in held]
    return train, [r for r in records if r["id"] in held]


def cmd_export_gguf(args) -> None:
    from ragtrain.core.records import write_json
    from ragtrain.training.export import export_gguf

    stats = export_gguf(args.model, args.output, args.params.get("export_type", "f16"))
    if args.stats:
        write_json(args.stats, stats)


def register(stages) -> None:
    p = add_stage(
        stages,
        "base-model",
        cmd_base_model,
        "import a base model (GGUF, local folder or hub id) as safetensors",
    )
    p.add_argument("--output", required=True, help="model folder")

    p = add_stage(
        stages,
        "train",
        cmd_train,
        "SFT, DPO, KTO, ORPO or SimPO with TRL (LoRA or full); saves a merged model",
    )
    p.add_argument("--init", required=True, help="the model folder training starts from")
    p.add_argument("--train", required=True, help="training records (JSONL)")
    p.add_argument("--dev", help="held-out records (JSONL)")
    p.add_argument("--work", required=True, help="work folder root (checkpoints; resumed)")
    p.add_argument("--output", required=True, help="model folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")

    p = add_stage(
        stages,
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

    p = add_stage(
        stages,
        "train-rl",
        cmd_train_rl,
        "RL from reward sources: PPO (ours, per-token rewards), GRPO or RLOO (TRL)",
    )
    p.add_argument("--init", required=True, help="the policy's starting model folder")
    p.add_argument("--examples", help="questions with their documents (JSONL)")
    p.add_argument("--corpus", help="ppo over a BEIR task: its corpus (passage prompts)")
    p.add_argument("--qrels", help="with --corpus: the task's qrels folder (train: labelled)")
    p.add_argument("--prompt", required=True, help="Jinja template of the user turn")
    add_reward_models(p)
    p.add_argument(
        "--retriever",
        action="append",
        metavar="NAME=FOLDER",
        help="a trained biencoder a retrieval_rank source names (repeatable)",
    )
    p.add_argument("--work", required=True, help="work folder root (checkpoints; resumed)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--output", required=True, help="the trained model's folder")

    p = add_stage(
        stages,
        "export-gguf",
        cmd_export_gguf,
        "write a model folder as one GGUF file (llama.cpp, ollama): Llama-architecture models",
    )
    p.add_argument("--model", required=True, help="the model folder (safetensors)")
    p.add_argument("--output", required=True, help="the GGUF file")
    p.add_argument("--stats", help="a JSON record of what was written")
