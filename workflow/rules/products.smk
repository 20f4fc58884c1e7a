rule self_demos:
    input:
        model=lambda w: model_dir(product(w)["model"]),
        examples=lambda w: examples_path(product(w)["dataset"], product(w)["retrieval"]),
        prompt=lambda w: prompt_path(product(w)["prompt"]),
        # sampling strategies: their templates and the prompt searches they read
        templates=product_templates,
        searches=lambda w: list(strategy_searches(w).values()),
    output:
        samples=product_file("{product}", "data.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "self_demos"),
    conda:
        "../../envs/generate.yaml"
    # One generation engine at a time (see rule evaluate).
    threads: 4
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        work=lambda w: work_root("products", w.product),
        strategies=lambda w, input: " ".join(
            [
                named_args("--template", input.templates),
                named_args("--search", strategy_searches(w)),
            ]
        ),
    shell:
        "python -m ragtrain self-demos --params {params.node:q} --model {input.model:q}"
        " --examples {input.examples:q} --prompt {input.prompt:q} {params.strategies}"
        " --work {params.work:q} --output {output.samples:q} --stats {output.stats:q}"
        " > {log:q} 2>&1"


# A beam search over system prompts; its model and its score judge's model are loaded
# once where they are the same.
rule prompt_search:
    input:
        **{
            key: (lambda w, key=key: judge_input(product(w)["judge"])[key])
            for key in ("judge_model", "judge_prompt")
        },
        model=lambda w: model_dir(product(w)["model"]),
        examples=lambda w: examples_path(product(w)["dataset"], product(w)["retrieval"]),
        prompt=lambda w: prompt_path(product(w)["prompt"]),
        templates=product_templates,
    output:
        prompts=product_file("{product}", "data.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "prompt_search"),
    conda:
        "../../envs/generate.yaml"
    threads: 4
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        judge=lambda w: judge_node(product(w)["judge"]),
        work=lambda w: work_root("products", w.product),
        templates=lambda w, input: named_args("--template", input.templates),
    shell:
        "python -m ragtrain prompt-search --params {params.node:q} --model {input.model:q}"
        " --examples {input.examples:q} --prompt {input.prompt:q} {params.templates}"
        " --judge {params.judge:q} --judge-model {input.judge_model:q}"
        " --judge-prompt {input.judge_prompt:q} --work {params.work:q}"
        " --output {output.prompts:q} --stats {output.stats:q} > {log:q} 2>&1"


# A pick judge's brackets over each question's samples.
rule tournament:
    input:
        **{
            key: (lambda w, key=key: judge_input(product(w)["judge"])[key])
            for key in ("judge_model", "judge_prompt")
        },
        samples=lambda w: product_file(product(w)["from"], "data.jsonl"),
    output:
        results=product_file("{product}", "data.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "tournament"),
    conda:
        "../../envs/generate.yaml"
    threads: 4
    resources:
        **resources_of("generate", product),
    params:
        node=lambda w: node("products", w.product),
        judge=lambda w: judge_node(product(w)["judge"]),
    shell:
        "python -m ragtrain tournament --params {params.node:q} --judge {params.judge:q}"
        " --judge-model {input.judge_model:q} --judge-prompt {input.judge_prompt:q}"
        " --input {input.samples:q} --output {output.results:q} --stats {output.stats:q}"
        " > {log:q} 2>&1"


rule judge:
    input:
        lambda w: product_file(product(w)["from"], "data.jsonl"),
    output:
        judged=product_file("{product}", "data.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=judge_products(by_model=False),
    conda:
        "../../envs/evaluate.yaml"
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        # the stage that makes this kind of product from another (a new kind of that
        # shape reuses the rule: `use rule judge as <kind> with:`)
        stage=stage_of("products"),
    shell:
        "python -m ragtrain {params.stage} --params {params.node:q} --input {input:q} --output {output.judged:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"


# A judge product whose `judge` is a model: the same stage, with the judge's model and
# template, on a generating job.
rule judge_by_model:
    input:
        **{
            key: (lambda w, key=key: judge_input(product(w)["judge"])[key])
            for key in ("judge_model", "judge_prompt")
        },
        samples=lambda w: product_file(product(w)["from"], "data.jsonl"),
    output:
        judged=product_file("{product}", "data.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=judge_products(by_model=True),
    conda:
        "../../envs/generate.yaml"
    threads: 4
    resources:
        **resources_of("generate", product),
    params:
        node=lambda w: node("products", w.product),
        judge=lambda w: judge_node(product(w)["judge"]),
    shell:
        "python -m ragtrain judge --params {params.node:q} --judge {params.judge:q}"
        " --judge-model {input.judge_model:q} --judge-prompt {input.judge_prompt:q}"
        " --input {input.samples:q} --output {output.judged:q} --stats {output.stats:q}"
        " > {log:q} 2>&1"


rule sft_data:
    input:
        lambda w: product_file(product(w)["from"], "data.jsonl"),
    output:
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "sft_data"),
    conda:
        "../../envs/data.yaml"
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        # the stage that builds this kind of product from judged samples
        stage=stage_of("products"),
    shell:
        "python -m ragtrain {params.stage} --params {params.node:q} --input {input:q}"
        " --train {output.train:q} --dev {output.dev:q} --stats {output.stats:q} > {log:q} 2>&1"


# Preference pairs come from judged samples the way SFT data does: the same rule for
# the other kind and its stage.
use rule sft_data as preference_pairs with:
    wildcard_constraints:
        product=names("products", "preference_pairs"),


rule query_sft_data:
    input:
        unpack(lambda w: task_files(product(w)["dataset"])),
        prompt=lambda w: prompt_path(product(w)["prompt"]),
        source=lambda w: (
            query_files([product(w)["from"]]) if product(w).get("from") else []
        ),
    output:
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "query_sft_data"),
    conda:
        "../../envs/data.yaml"
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        # gold train pairs of the task, or the queries of a product
        source=lambda w, input: (
            f"--input {shlex.quote(input.source[0])}"
            if input.source
            else f"--queries {shlex.quote(input.queries)} --qrels {shlex.quote(input.qrels)}"
        ),
    shell:
        "python -m ragtrain query-sft-data --params {params.node:q} {params.source}"
        " --corpus {input.corpus:q} --prompt {input.prompt:q} --train {output.train:q}"
        " --dev {output.dev:q} --stats {output.stats:q} > {log:q} 2>&1"


rule pseudo_queries:
    input:
        unpack(lambda w: task_files(product(w)["dataset"])),
        model=lambda w: model_dir(product(w)["model"]),
        prompt=lambda w: prompt_path(product(w)["prompt"]),
    output:
        queries=product_file("{product}", "data.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "pseudo_queries"),
    conda:
        "../../envs/generate.yaml"
    # One generation engine at a time (see rule evaluate).
    threads: 4
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        work=lambda w: work_root("products", w.product),
    shell:
        "python -m ragtrain pseudo-queries --params {params.node:q} --model {input.model:q}"
        " --corpus {input.corpus:q} --qrels {input.qrels:q} --prompt {input.prompt:q}"
        " --work {params.work:q} --output {output.queries:q} --stats {output.stats:q} > {log:q} 2>&1"


rule query_filter:
    input:
        unpack(lambda w: task_files(product(w)["dataset"])),
        source=lambda w: query_files([product(w)["from"]]),
        # LossNet: the current retriever
        retriever=lambda w: (
            model_dir(product(w)["retriever"]) if product(w).get("retriever") else []
        ),
    output:
        queries=product_file("{product}", "data.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "query_filter"),
    conda:
        "../../envs/data.yaml"
    threads: 2
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        retriever=lambda w, input: (
            f"--retriever {shlex.quote(input.retriever)}" if input.retriever else ""
        ),
    shell:
        "python -m ragtrain query-filter --params {params.node:q} --input {input.source:q}"
        " --corpus {input.corpus:q} --queries {input.queries:q} --qrels {input.qrels:q}"
        " {params.retriever} --output {output.queries:q} --stats {output.stats:q} > {log:q} 2>&1"


rule query_preferences:
    input:
        unpack(lambda w: task_files(product(w)["dataset"])),
        source=lambda w: query_files([product(w)["from"]]),
        retriever=lambda w: model_dir(product(w)["retriever"]),
        prompt=str(PROMPTS / "doc2query.jinja"),
    output:
        queries=product_file("{product}", "data.jsonl"),
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "query_preferences"),
    conda:
        "../../envs/data.yaml"
    threads: 2
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
    shell:
        "python -m ragtrain query-preferences --params {params.node:q} --input {input.source:q}"
        " --corpus {input.corpus:q} --retriever {input.retriever:q} --prompt {input.prompt:q}"
        " --output {output.queries:q} --train {output.train:q} --dev {output.dev:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"


rule reward:
    input:
        samples=lambda w: product_file(product(w)["from"], "data.jsonl"),
        reward_model=lambda w: model_dir(product(w)["model"]),
    output:
        scored=product_file("{product}", "data.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "reward"),
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
    shell:
        "python -m ragtrain reward --params {params.node:q} --input {input.samples:q}"
        " --reward-model-dir {input.reward_model:q} --output {output.scored:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"


# Distillation data: the teacher's answers a dataset carries, on the recipe's prompt.
rule reference_sft:
    input:
        examples=lambda w: examples_path(product(w)["dataset"], product(w)["retrieval"]),
        prompt=lambda w: prompt_path(product(w)["prompt"]),
    output:
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "reference_sft"),
    conda:
        "../../envs/data.yaml"
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
    shell:
        "python -m ragtrain reference-sft --params {params.node:q}"
        " --examples {input.examples:q} --prompt {input.prompt:q} --train {output.train:q}"
        " --dev {output.dev:q} --stats {output.stats:q} > {log:q} 2>&1"


rule best_of_n:
    input:
        samples=lambda w: product_file(product(w)["from"], "data.jsonl"),
        reward_inputs=lambda w: reward_inputs(product(w)),
    output:
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "best_of_n"),
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        work=lambda w: work_root("products", w.product),
        reward_args=lambda w: reward_args(product(w)),
    shell:
        "python -m ragtrain best-of-n --params {params.node:q} --input {input.samples:q}"
        " {params.reward_args} --work {params.work:q} --train {output.train:q}"
        " --dev {output.dev:q} --stats {output.stats:q} > {log:q} 2>&1"


rule segment_beam:
    input:
        model=lambda w: model_dir(product(w)["model"]),
        examples=lambda w: examples_path(product(w)["dataset"], product(w)["retrieval"]),
        prompt=lambda w: prompt_path(product(w)["prompt"]),
        reward_inputs=lambda w: reward_inputs(product(w)),
    output:
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "segment_beam"),
    conda:
        "../../envs/generate.yaml"
    # One generation engine at a time (see rule evaluate).
    threads: 4
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        work=lambda w: work_root("products", w.product),
        reward_args=lambda w: reward_args(product(w)),
    shell:
        "python -m ragtrain segment-beam --params {params.node:q} --model {input.model:q}"
        " --examples {input.examples:q} --prompt {input.prompt:q} {params.reward_args}"
        " --work {params.work:q} --train {output.train:q} --dev {output.dev:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"


# DPA-RAG's preference knowledge: answers without and with each document, labelled.
rule doc_preferences:
    input:
        model=lambda w: model_dir(product(w)["model"]),
        examples=lambda w: examples_path(product(w)["dataset"], product(w)["retrieval"]),
        prompt=lambda w: prompt_path(product(w)["prompt"]),
        closed_book_prompt=lambda w: prompt_path(product(w)["closed_book_prompt"]),
    output:
        labels=product_file("{product}", "labels.jsonl"),
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "doc_preferences"),
    conda:
        "../../envs/generate.yaml"
    threads: 4
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        work=lambda w: work_root("products", w.product),
    shell:
        "python -m ragtrain doc-preferences --params {params.node:q} --model {input.model:q}"
        " --examples {input.examples:q} --prompt {input.prompt:q}"
        " --closed-book-prompt {input.closed_book_prompt:q} --work {params.work:q}"
        " --labels {output.labels:q} --train {output.train:q} --dev {output.dev:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"


# DPA-RAG's query augmentation: rewrites per strategy, filtered by an NLI judge.
rule query_augment:
    input:
        model=lambda w: model_dir(product(w)["model"]),
        examples=lambda w: f"{RESULTS}/data/{product(w)['dataset']}/examples.jsonl",
        templates=lambda w: [prompt_path(f"augment_{s}") for s in product(w)["augment"]],
        nli=lambda w: nli_dirs([product(w)["nli"]] if product(w).get("nli") else []),
    output:
        rewrites=product_file("{product}", "rewrites.jsonl"),
        examples=product_file("{product}", "examples.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "query_augment"),
    conda:
        "../../envs/generate.yaml"
    threads: 4
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
        work=lambda w: work_root("products", w.product),
        templates=lambda w, input: named_args("--template", input.templates),
        nli=lambda w: nli_args([product(w)["nli"]] if product(w).get("nli") else []),
    shell:
        "python -m ragtrain query-augment --params {params.node:q} --model {input.model:q}"
        " --examples {input.examples:q} {params.templates} {params.nli}"
        " --work {params.work:q} --rewrites {output.rewrites:q}"
        " --examples-out {output.examples:q} --stats {output.stats:q} > {log:q} 2>&1"


rule pre_aligned_sft:
    input:
        labels=lambda w: product_file(product(w)["from"], "labels.jsonl"),
        prompt=lambda w: prompt_path(product(w)["prompt"]),
    output:
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "pre_aligned_sft"),
    conda:
        "../../envs/data.yaml"
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
    shell:
        "python -m ragtrain pre-aligned-sft --params {params.node:q} --labels {input.labels:q}"
        " --prompt {input.prompt:q} --train {output.train:q} --dev {output.dev:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"
