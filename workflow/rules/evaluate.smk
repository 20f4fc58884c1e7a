rule evaluate:
    input:
        model=lambda w: model_dir(w.model),
        examples=eval_examples,
        prompt=eval_prompt,
        nli=lambda w: nli_dirs(eval_nli(w)),
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
        # Its judges are left out: judging reads these predictions, it does not make them.
        node=lambda w: json.dumps(
            {
                k: v
                for k, v in evaluation(w).items()
                if k not in ("resources", "judges")
            },
            sort_keys=True,
        ),
        nli=lambda w: nli_args(eval_nli(w)),
    shell:
        "python -m ragtrain evaluate --params {params.node:q} --model {input.model:q}"
        " --examples {input.examples:q} --prompt {input.prompt:q} {params.nli}"
        " --predictions {output.predictions:q} --metrics {output.metrics:q} > {log:q} 2>&1"


# A relevance judge's verdicts on a dataset's retrieved documents: one job for every
# model evaluated with them.
rule judge_relevance:
    input:
        **{
            key: (lambda w, key=key: judge_input(w.judge)[key])
            for key in ("judge_model", "judge_prompt")
        },
        examples=lambda w: examples_path(w.dataset, w.retrieval),
    output:
        verdicts=relevance_file("{judge}", "{dataset}", "{retrieval}"),
        stats=f"{RESULTS}/judged/{{judge}}/{{dataset}}/{{retrieval}}/stats.json",
    log:
        f"{LOGS}/judged/{{judge}}/{{dataset}}/{{retrieval}}.log",
    wildcard_constraints:
        judge=names("judges", "relevance"),
    conda:
        "../../envs/generate.yaml"
    threads: 4
    resources:
        **resources_of("generate", lambda w: CFG["judges"][w.judge]),
    params:
        judge=lambda w: judge_node(w.judge),
    shell:
        "python -m ragtrain judge-relevance --judge {params.judge:q}"
        " --judge-model {input.judge_model:q} --judge-prompt {input.judge_prompt:q}"
        " --examples {input.examples:q} --verdicts {output.verdicts:q}"
        " --stats {output.stats:q} > {log:q} 2>&1"


# An evaluation's answers labelled by its label judge, with its relevance judge's
# verdicts: the same metrics from model verdicts, beside the rules'.
rule judge_evaluation:
    input:
        unpack(judged_evaluation_input),
    output:
        verdicts=f"{RESULTS}/eval/{{model}}/{{dataset}}/{{retrieval}}/judged/verdicts.jsonl",
        metrics=f"{RESULTS}/eval/{{model}}/{{dataset}}/{{retrieval}}/judged/metrics.json",
    log:
        f"{LOGS}/evaluate/{{model}}/{{dataset}}/{{retrieval}}.judged.log",
    conda:
        "../../envs/generate.yaml"
    threads: 4
    resources:
        **resources_of("generate", evaluation),
    params:
        judges=lambda w: json.dumps(evaluation(w)["judges"], sort_keys=True),
        label=lambda w, input: (
            f"--judge {shlex.quote(judge_node(evaluation(w)['judges']['label']))}"
            f" --judge-model {shlex.quote(input.judge_model)}"
            f" --judge-prompt {shlex.quote(input.judge_prompt)}"
            if "judge_model" in input.keys()
            else ""
        ),
        relevance=lambda w, input: (
            f"--relevance {shlex.quote(input.relevance)}"
            if "relevance" in input.keys()
            else ""
        ),
    shell:
        "python -m ragtrain judge-evaluation --judges {params.judges:q} {params.label}"
        " {params.relevance} --predictions {input.predictions:q}"
        " --rules-metrics {input.metrics:q} --verdicts {output.verdicts:q}"
        " --metrics {output.metrics:q} > {log:q} 2>&1"


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
