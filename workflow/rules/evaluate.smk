rule evaluate:
    input:
        model=lambda w: model_dir(w.model),
        examples=eval_examples,
        prompt=eval_prompt,
    output:
        predictions=f"{RESULTS}/eval/{{model}}/{{dataset}}/{{retrieval}}/predictions.jsonl",
        metrics=f"{RESULTS}/eval/{{model}}/{{dataset}}/{{retrieval}}/metrics.json",
    log:
        f"{LOGS}/evaluate/{{model}}/{{dataset}}/{{retrieval}}.log",
    conda:
        "../../envs/generate.yaml"
    # Snakemake caps threads at --cores: on a small CPU one engine at a time, as two
    # side by side only thrash.
    threads: 4
    resources:
        **resources_of("generate", evaluation),
    params:
        node=lambda w: json.dumps(
            {k: v for k, v in evaluation(w).items() if k != "resources"},
            sort_keys=True,
        ),
    shell:
        "python -m ragtrain evaluate --params {params.node:q} --model {input.model:q}"
        " --examples {input.examples:q} --prompt {input.prompt:q}"
        " --predictions {output.predictions:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule evaluate_retrieval:
    input:
        unpack(retrieval_eval_input),
    output:
        run=f"{RESULTS}/eval_retrieval/{{ranker}}/{{dataset}}/{{split}}/run.trec",
        metrics=f"{RESULTS}/eval_retrieval/{{ranker}}/{{dataset}}/{{split}}/metrics.json",
    log:
        f"{LOGS}/eval_retrieval/{{ranker}}/{{dataset}}/{{split}}.log",
    wildcard_constraints:
        ranker=rankers(colbert=False),
    conda:
        "../../envs/data.yaml"
    threads: 2
    params:
        node=lambda w: json.dumps(
            {k: v for k, v in retrieval_evaluation(w).items() if k != "key"},
            sort_keys=True,
        ),
        ranker=lambda w, input: " ".join(
            f"--{key} {shlex.quote(input[key])}"
            for key in ("index", "model", "candidates")
            if key in input.keys()
        ),
    shell:
        "python -m ragtrain evaluate-retrieval --params {params.node:q} {params.ranker}"
        " --corpus {input.corpus:q} --queries {input.queries:q} --qrels {input.qrels:q}"
        " --run {output.run:q} --metrics {output.metrics:q} > {log:q} 2>&1"


# PyLate's pins (transformers <= 5.3, torch 2.11) clash with the other envs': the same
# stage for ColBERT models, in its own env.
use rule evaluate_retrieval as evaluate_colbert with:
    wildcard_constraints:
        ranker=rankers(colbert=True),
    conda:
        "../../envs/colbert.yaml"
