rule index:
    input:
        unpack(index_input),
    output:
        directory(f"{RESULTS}/index/{{retriever}}"),
    log:
        f"{LOGS}/index/{{retriever}}.log",
    # Peak memory (max_rss) and time of the job, beside its log.
    benchmark:
        f"{LOGS}/index/{{retriever}}.benchmark.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 2
    params:
        # k is a search setting: a new k reruns `retrieve`, not the index.
        node=lambda w: node("retrievers", w.retriever, drop=("k",)),
        # A dense index's encoded shards, kept for the rerun of a killed job.
        work=lambda w: work_root("retrievers", w.retriever),
    shell:
        "python -m ragtrain index --params {params.node:q} --corpus {input.corpus:q}"
        " --work {params.work:q} --output {output:q} > {log:q} 2>&1"


rule retrieve:
    input:
        index=f"{RESULTS}/index/{{retriever}}",
        examples=f"{RESULTS}/data/{{dataset}}/examples.jsonl",
    output:
        examples=f"{RESULTS}/retrieval/{{retriever}}/{{dataset}}/examples.jsonl",
        stats=f"{RESULTS}/retrieval/{{retriever}}/{{dataset}}/stats.json",
    log:
        f"{LOGS}/retrieve/{{retriever}}/{{dataset}}.log",
    wildcard_constraints:
        retriever=names("retrievers", *INDEXED_RETRIEVERS),
    conda:
        "../../envs/data.yaml"
    threads: 2
    params:
        node=lambda w: node("retrievers", w.retriever),
    shell:
        "python -m ragtrain retrieve --params {params.node:q} --index {input.index:q}"
        " --examples {input.examples:q} --output {output.examples:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"


# A first stage's top n reordered by a reranker (trained, or untrained: none named).
rule rerank:
    input:
        index=lambda w: f"{RESULTS}/index/{CFG['retrievers'][w.retriever]['first']}",
        examples=f"{RESULTS}/data/{{dataset}}/examples.jsonl",
        reranker=lambda w: reranker_input(w.retriever),
    output:
        examples=f"{RESULTS}/retrieval/{{retriever}}/{{dataset}}/examples.jsonl",
        stats=f"{RESULTS}/retrieval/{{retriever}}/{{dataset}}/stats.json",
    log:
        f"{LOGS}/retrieve/{{retriever}}/{{dataset}}.log",
    wildcard_constraints:
        retriever=names("retrievers", "rerank"),
    conda:
        "../../envs/data.yaml"
    threads: 2
    params:
        node=lambda w: node("retrievers", w.retriever),
        reranker=lambda w, input: (
            f"--reranker {shlex.quote(input.reranker[0])}" if input.reranker else ""
        ),
    shell:
        "python -m ragtrain rerank --params {params.node:q} --index {input.index:q}"
        " {params.reranker} --examples {input.examples:q} --output {output.examples:q}"
        " --stats {output.stats:q} --threads {threads} > {log:q} 2>&1"
