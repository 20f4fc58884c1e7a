rule base_model:
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{LOGS}/models/{{model}}.log",
    wildcard_constraints:
        model=names("models", "base"),
    conda:
        "../../envs/train.yaml"
    resources:
        **node_resources("models"),
    params:
        node=lambda w: node("models", w.model),
    shell:
        "python -m ragtrain base-model --params {params.node:q} --output {output:q} > {log:q} 2>&1"


rule train:
    input:
        init=lambda w: model_dir(CFG["models"][w.model]["init"]),
        train=lambda w: training_input(w, "train"),
        dev=lambda w: training_input(w, "dev"),
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{LOGS}/models/{{model}}.log",
    wildcard_constraints:
        model=names("models", "sft", "dpo", "kto", "orpo", "simpo"),
    conda:
        "../../envs/train.yaml"
    threads: 4
    resources:
        **node_resources("models"),
    params:
        node=lambda w: node("models", w.model),
        work=lambda w: work_root("models", w.model),
        launch=launch,
        # the stage that trains this kind of model from an SFT / pairs product
        stage=stage_of("models"),
    shell:
        "python -m ragtrain.launch {params.launch} -- {params.stage} --params {params.node:q} --init {input.init:q}"
        " --train {input.train:q} --dev {input.dev:q} --work {params.work:q}"
        " --threads {threads} --output {output:q} > {log:q} 2>&1"


# A reward model trains the way SFT and DPO models do, on preference pairs: the same
# rule for its kind and stage.
use rule train as train_reward_model with:
    wildcard_constraints:
        model=names("models", "reward_model"),


rule train_biencoder:
    input:
        unpack(lambda w: task_files(CFG["models"][w.model]["dataset"])),
        pseudo=lambda w: query_files(CFG["models"][w.model]["queries"]),
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{LOGS}/models/{{model}}.log",
    wildcard_constraints:
        model=names("models", "biencoder"),
    conda:
        "../../envs/data.yaml"
    threads: 2
    resources:
        **node_resources("models"),
    params:
        node=lambda w: node("models", w.model),
    shell:
        "python -m ragtrain train-retriever --params {params.node:q} --corpus {input.corpus:q}"
        " --queries {input.queries:q} --qrels {input.qrels:q} --pseudo {input.pseudo:q}"
        " --threads {threads} --output {output:q} > {log:q} 2>&1"


# PyLate's pins (transformers <= 5.3, torch 2.11) clash with the other envs': the same
# stage for ColBERT models, in its own env.
use rule train_biencoder as train_colbert with:
    wildcard_constraints:
        model=names("models", "colbert"),
    conda:
        "../../envs/colbert.yaml"


rule train_reranker:
    input:
        data=lambda w: reranker_data(w.model),
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{LOGS}/models/{{model}}.log",
    wildcard_constraints:
        model=names("models", "reranker"),
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **node_resources("models"),
    params:
        node=lambda w: node("models", w.model),
        # a doc_preferences product's folder, or a DPA-RAG file
        source=lambda w, input: (
            f"--data {shlex.quote(str(Path(input.data[0]).parent))}"
            if CFG["models"][w.model].get("data")
            else f"--path {shlex.quote(input.data[0])}"
        ),
    shell:
        "python -m ragtrain train-reranker --params {params.node:q} {params.source}"
        " --threads {threads} --output {output:q} > {log:q} 2>&1"


rule train_rl:
    input:
        unpack(rl_prompt_inputs),
        init=lambda w: model_dir(CFG["models"][w.model]["init"]),
        prompt=lambda w: prompt_path(CFG["models"][w.model]["prompt"]),
        reward_inputs=lambda w: reward_inputs(CFG["models"][w.model]),
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{LOGS}/models/{{model}}.log",
    wildcard_constraints:
        model=names("models", "ppo", "grpo", "rloo"),
    conda:
        "../../envs/train.yaml"
    threads: 4
    resources:
        **node_resources("models"),
    params:
        node=lambda w: node("models", w.model),
        work=lambda w: work_root("models", w.model),
        launch=launch,
        reward_args=lambda w: reward_args(CFG["models"][w.model]),
        prompts=rl_prompt_args,
    shell:
        "python -m ragtrain.launch {params.launch} -- train-rl --params {params.node:q} --init {input.init:q}"
        " {params.prompts} --prompt {input.prompt:q} {params.reward_args}"
        " --work {params.work:q} --threads {threads} --output {output:q} > {log:q} 2>&1"


# A language model also written as one GGUF file (`export: gguf`), for llama.cpp / ollama.
rule export_gguf:
    input:
        model=lambda w: model_dir(w.model),
    output:
        gguf=f"{RESULTS}/exports/{{model}}.gguf",
        stats=f"{RESULTS}/exports/{{model}}.json",
    log:
        f"{LOGS}/exports/{{model}}.log",
    wildcard_constraints:
        model=names("models", *LANGUAGE_MODELS),
    conda:
        "../../envs/train.yaml"
    params:
        export=lambda w: json.dumps(
            {"export_type": CFG["models"][w.model]["export_type"]}, sort_keys=True
        ),
    shell:
        "python -m ragtrain export-gguf --params {params.export:q} --model {input.model:q}"
        " --output {output.gguf:q} --stats {output.stats:q} > {log:q} 2>&1"
