rule report:
    input:
        metrics=eval_metrics(),
        retrieval=retrieval_stats(),
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
    log:
        f"{LOGS}/report.log",
    conda:
        "../../envs/evaluate.yaml"
    params:
        run=RUN,
    shell:
        "python -m ragtrain report --run {params.run:q} --metrics {input.metrics:q}"
        " --retrieval {input.retrieval:q} --summary {output.summary:q} --table {output.table:q}"
        " --plot {output.plot:q} > {log:q} 2>&1"
