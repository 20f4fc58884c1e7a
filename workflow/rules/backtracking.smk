# Backtracking correction: the step format's SFT data, step data by error sampling,
# published step files, and pair products mixed into one (ragtrain.stages.backtracking).


rule step_sft:
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
        product=names("products", "step_sft"),
    conda:
        "../../envs/data.yaml"
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
    shell:
        "python -m ragtrain step-sft --params {params.node:q} --examples {input.examples:q}"
        " --prompt {input.prompt:q} --train {output.train:q} --dev {output.dev:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"


# Step K's continuations sampled from the current model; its pairs for the next DPO node.
rule step_pairs:
    input:
        model=lambda w: model_dir(product(w)["model"]),
        examples=lambda w: examples_path(product(w)["dataset"], product(w)["retrieval"]),
        prompt=lambda w: prompt_path(product(w)["prompt"]),
    output:
        samples=product_file("{product}", "samples.jsonl"),
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "step_pairs"),
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
        "python -m ragtrain step-pairs --params {params.node:q} --model {input.model:q}"
        " --examples {input.examples:q} --prompt {input.prompt:q} --work {params.work:q}"
        " --samples {output.samples:q} --train {output.train:q} --dev {output.dev:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"


rule pair_file:
    input:
        lambda w: product(w)["path"],
    output:
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "pair_file"),
    conda:
        "../../envs/data.yaml"
    resources:
        **node_resources("products"),
    params:
        node=lambda w: node("products", w.product),
    shell:
        "python -m ragtrain pair-file --params {params.node:q} --input {input:q}"
        " --train {output.train:q} --dev {output.dev:q} --stats {output.stats:q} > {log:q} 2>&1"


rule pair_mix:
    input:
        train=lambda w: [product_file(p, "train.jsonl") for p in product(w)["pairs"]],
        dev=lambda w: [product_file(p, "dev.jsonl") for p in product(w)["pairs"]],
    output:
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "pair_mix"),
    conda:
        "../../envs/evaluate.yaml"
    resources:
        **node_resources("products"),
    params:
        parts=lambda w, input: " ".join(
            [
                named_args("--part-train", input.train),
                named_args("--part-dev", input.dev),
            ]
        ),
    shell:
        "python -m ragtrain pair-mix {params.parts} --train {output.train:q}"
        " --dev {output.dev:q} --stats {output.stats:q} > {log:q} 2>&1"
