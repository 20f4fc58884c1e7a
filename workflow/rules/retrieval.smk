rule index:
    input:
        index_input,
    output:
        directory(f"{RESULTS}/index/{{retriever}}"),
    log:
        f"{LOGS}/index/{{retriever}}.log",
    conda:
        "../../envs/data.yaml"
    threads: 2
    params:
        # k is a search setting: a new k reruns `retrieve`, not the index.
        node=lambda w: node("retrievers", w.retriever, drop=("k",)),
    shell:
        "python -m ragtrain index --params {params.node:q} --corpus {input:q} --output {output:q} > {log:q} 2>&1"


rule retrieve:
    input:
        index=f"{RESULTS}/index/{{retriever}}",
        examples=f"{RESULTS}/data/{{dataset}}/examples.jsonl",
    output:
        examples=f"{RESULTS}/retrieval/{{retriever}}/{{dataset}}/examples.jsonl",
        stats=f"{RESULTS}/retrieval/{{retriever}}/{{dataset}}/stats.json",
    log:
        f"{LOGS}/retrieve/{{retriever}}/{{dataset}}.log",
    conda:
        "../../envs/data.yaml"
    threads: 2
    params:
        node=lambda w: node("retrievers", w.retriever),
    shell:
        "python -m ragtrain retrieve --params {params.node:q} --index {input.index:q}"
        " --examples {input.examples:q} --output {output.examples:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"
