rule self_demos:
    input:
        model=lambda w: model_dir(product(w)["model"]),
        examples=lambda w: examples_path(product(w)["dataset"], product(w)["retrieval"]),
        prompt=lambda w: prompt_path(product(w)["prompt"]),
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
    params:
        node=lambda w: node("products", w.product),
        work=lambda w: work_root("products", w.product),
    shell:
        "python -m ragtrain self-demos --params {params.node:q} --model {input.model:q}"
        " --examples {input.examples:q} --prompt {input.prompt:q} --work {params.work:q}"
        " --output {output.samples:q} --stats {output.stats:q} > {log:q} 2>&1"


rule judge:
    input:
        lambda w: product_file(product(w)["from"], "data.jsonl"),
    output:
        judged=product_file("{product}", "data.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "judge"),
    conda:
        "../../envs/evaluate.yaml"
    params:
        node=lambda w: node("products", w.product),
    shell:
        "python -m ragtrain judge --params {params.node:q} --input {input:q} --output {output.judged:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"


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
    params:
        node=lambda w: node("products", w.product),
    shell:
        "python -m ragtrain sft-data --params {params.node:q} --input {input:q}"
        " --train {output.train:q} --dev {output.dev:q} --stats {output.stats:q} > {log:q} 2>&1"


rule preference_pairs:
    input:
        lambda w: product_file(product(w)["from"], "data.jsonl"),
    output:
        train=product_file("{product}", "train.jsonl"),
        dev=product_file("{product}", "dev.jsonl"),
        stats=product_file("{product}", "stats.json"),
    log:
        f"{LOGS}/products/{{product}}.log",
    wildcard_constraints:
        product=names("products", "preference_pairs"),
    conda:
        "../../envs/data.yaml"
    params:
        node=lambda w: node("products", w.product),
    shell:
        "python -m ragtrain preference-pairs --params {params.node:q} --input {input:q}"
        " --train {output.train:q} --dev {output.dev:q} --stats {output.stats:q} > {log:q} 2>&1"
