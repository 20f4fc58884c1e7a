rule report:
    input:
        metrics=eval_metrics(),
        retrieval=retrieval_stats(),
        models=[model_dir(m) for m in trained_models()],
        products=product_stats(),
        retrieval_metrics=retrieval_metrics(),
        retrievers=[model_dir(m) for m in retriever_models()],
        rerankers=[model_dir(m) for m in reranker_models()],
        retriever_pairs=retriever_pair_input(),
    output:
        summary=report(
            f"{RESULTS}/report/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
        table=report(
            f"{RESULTS}/report/summary.csv",
            caption="../report/table.rst",
            category="Summary",
        ),
        plot=report(
            f"{RESULTS}/report/metrics.png",
            caption="../report/metrics.rst",
            category="Evaluation",
        ),
        training=report(
            f"{RESULTS}/report/training.png",
            caption="../report/training.rst",
            category="Training",
        ),
        retriever_pairs=report(
            f"{RESULTS}/report/retriever_pairs.csv",
            caption="../report/retriever_pairs.rst",
            category="Summary",
        ),
    log:
        f"{LOGS}/report.log",
    conda:
        "../../envs/evaluate.yaml"
    params:
        run=RUN,
        seed=CFG["seed"],
        resamples=CFG.get("report", {}).get("resamples", RESAMPLES),
        retriever_pairs=json.dumps(retriever_pairs(), sort_keys=True),
    shell:
        "python -m ragtrain report --run {params.run:q} --seed {params.seed}"
        " --resamples {params.resamples} --metrics {input.metrics:q}"
        " --retrieval {input.retrieval:q} --models {input.models:q}"
        " --products {input.products:q} --retrieval-metrics {input.retrieval_metrics:q}"
        " --retrievers {input.retrievers:q} --rerankers {input.rerankers:q} --summary {output.summary:q} --table {output.table:q}"
        " --plot {output.plot:q} --training-plot {output.training:q}"
        " --retriever-pairs {params.retriever_pairs:q}"
        " --retriever-pairs-table {output.retriever_pairs:q} > {log:q} 2>&1"
