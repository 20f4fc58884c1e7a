rule base_model:
    output:
        directory(f"{RESULTS}/models/{{model}}"),
    log:
        f"{LOGS}/models/{{model}}.log",
    conda:
        "../../envs/train.yaml"
    params:
        node=lambda w: node("models", w.model),
    shell:
        "python -m ragtrain base-model --params {params.node:q} --output {output:q} > {log:q} 2>&1"
