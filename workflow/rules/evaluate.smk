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
    params:
        node=lambda w: json.dumps(evaluation(w), sort_keys=True),
    shell:
        "python -m ragtrain evaluate --params {params.node:q} --model {input.model:q}"
        " --examples {input.examples:q} --prompt {input.prompt:q}"
        " --predictions {output.predictions:q} --metrics {output.metrics:q} > {log:q} 2>&1"
