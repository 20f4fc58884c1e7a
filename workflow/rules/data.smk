rule world:
    output:
        corpus=f"{RESULTS}/worlds/{{world}}/corpus.jsonl",
        questions=f"{RESULTS}/worlds/{{world}}/questions.jsonl",
        stats=f"{RESULTS}/worlds/{{world}}/stats.json",
        entities=f"{RESULTS}/worlds/{{world}}/entities.jsonl",
    log:
        f"{LOGS}/world/{{world}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        # Without ALCE questions a world's settings are what they were before `alce`
        # existed: worlds built then are not rerun.
        node=lambda w: node(
            "worlds", w.world, drop=() if CFG["worlds"][w.world]["alce"] else ("alce",)
        ),
    shell:
        "python -m ragtrain world --params {params.node:q} --corpus {output.corpus:q}"
        " --questions {output.questions:q} --stats {output.stats:q}"
        " --entities {output.entities:q} > {log:q} 2>&1"


# Streamed: the passages, and the tables that read them by row and id (corpus_tables).
rule corpus:
    input:
        corpus_input,
    output:
        corpus=f"{RESULTS}/corpus/{{corpus}}/corpus.jsonl",
        tables=corpus_tables("{corpus}"),
    log:
        f"{LOGS}/corpus/{{corpus}}.log",
    benchmark:
        f"{LOGS}/corpus/{{corpus}}.benchmark.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        node=lambda w: node("corpora", w.corpus),
    shell:
        "python -m ragtrain corpus --params {params.node:q} --input {input:q}"
        " --output {output.corpus:q} > {log:q} 2>&1"


rule dataset:
    input:
        dataset_input,
    output:
        examples=f"{RESULTS}/data/{{dataset}}/examples.jsonl",
        stats=f"{RESULTS}/data/{{dataset}}/stats.json",
    log:
        f"{LOGS}/dataset/{{dataset}}.log",
    wildcard_constraints:
        dataset=names("datasets", "qa"),
    conda:
        "../../envs/data.yaml"
    params:
        node=lambda w: node("datasets", w.dataset),
    shell:
        "python -m ragtrain dataset --params {params.node:q} --input {input:q}"
        " --output {output.examples:q} --stats {output.stats:q} > {log:q} 2>&1"


rule task:
    input:
        unpack(task_input),
    output:
        queries=f"{RESULTS}/data/{{dataset}}/queries.jsonl",
        qrels=directory(f"{RESULTS}/data/{{dataset}}/qrels"),
        stats=f"{RESULTS}/data/{{dataset}}/stats.json",
    log:
        f"{LOGS}/dataset/{{dataset}}.log",
    wildcard_constraints:
        dataset=names("datasets", "beir"),
    conda:
        "../../envs/data.yaml"
    params:
        node=lambda w: node("datasets", w.dataset),
        source=lambda w, input: (
            f"--entities {shlex.quote(input.entities)}"
            if "entities" in input.keys()
            else f"--folder {shlex.quote(input.folder)}"
        ),
    shell:
        "python -m ragtrain task --params {params.node:q} {params.source} --corpus {input.corpus:q}"
        " --queries {output.queries:q} --qrels {output.qrels:q} --stats {output.stats:q} > {log:q} 2>&1"
