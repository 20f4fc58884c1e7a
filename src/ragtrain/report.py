"""The run's report: summary.md, summary.csv, a bar chart of the evaluations and the
training curves of the trained models."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ragtrain.records import atomic_path, read_json

COLUMNS = [
    "model",
    "dataset",
    "retrieval",
    "n",
    "em",
    "f1",
    "accuracy",
    "refusal_rate",
    "correct_refusal",
    "false_refusal",
    "tokens_per_second",
]
PLOTTED = ["em", "f1", "accuracy", "correct_refusal"]


def _fmt(value, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if column == "tokens_per_second" else f"{value:.3f}"
    return str(value)


def _markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c), c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def load_rows(metric_files: list[str]) -> list[dict]:
    rows = [read_json(path) for path in metric_files]
    return sorted(rows, key=lambda r: (r["dataset"], r["model"], r["retrieval"]))


TRAINING_COLUMNS = [
    "model",
    "kind",
    "init",
    "n_train",
    "n_dev",
    "steps",
    "train_loss",
    "dev_loss",
    "dev_reward_accuracy",
    "dev_reward_margin",
    "train_runtime_s",
]


def load_training(model_dirs: list[str]) -> list[dict]:
    return [
        {"model": Path(d).name, **read_json(Path(d) / "metrics.json")} for d in sorted(model_dirs)
    ]


def _product_rows(stats_files: list[str]) -> list[dict]:
    """One line per product: what it holds, in a few words."""
    rows = []
    for file in sorted(stats_files):
        stats = read_json(file)
        name = Path(file).parent.name
        if "labels" in stats:
            labels = stats["labels"]
            groups = stats["by_group"]
            held = (
                f"{stats['n_samples']} samples of {stats['n_examples']} questions:"
                f" {labels['correct']} correct, {labels['incorrect']} incorrect,"
                f" {labels['refuse']} refusals; questions with a right sample:"
                f" {groups['answerable']['solved']}/{groups['answerable']['n_examples']}"
                f" answerable, {groups['unanswerable']['solved']}/"
                f"{groups['unanswerable']['n_examples']} unanswerable"
            )
        elif "pairs" in stats:
            parts = ", ".join(f"{k} {v}" for k, v in stats["pairs"].items())
            held = (
                f"{stats['n_train']} train + {stats['n_dev']} dev pairs;"
                f" all by kind/source: {parts}"
            )
        elif "sources" in stats:
            parts = ", ".join(f"{k} {v}" for k, v in stats["sources"].items())
            held = (
                f"{stats['n_train']} train + {stats['n_dev']} dev demonstrations;"
                f" all by source: {parts}"
            )
        elif "samples_per_example" in stats:
            held = (
                f"{stats['n_samples']} samples ({stats['samples_per_example']} per question),"
                f" {stats['mean_tokens_per_sample']} tokens each on average,"
                f" {stats['tokens_per_second']} generated tok/s"
            )
        else:
            continue
        rows.append({"product": name, "contents": held})
    return rows


def write_summary(
    rows: list[dict],
    retrieval_files: list[str],
    run: str,
    path: Path,
    training: list[dict] | None = None,
    product_files: list[str] | None = None,
) -> None:
    retrieval_rows = []
    for file in sorted(retrieval_files):
        stats = read_json(file)
        parts = Path(file).parts  # .../retrieval/<retriever>/<dataset>/stats.json
        k = stats["k"]
        retrieval_rows.append(
            {
                "retriever": parts[-3],
                "dataset": parts[-2],
                "k": k,
                "answer_recall": stats.get(f"answer_recall@{k}"),
                "gold_recall": stats.get(f"gold_recall@{k}"),
                "n": stats["n"],
            }
        )
    text = [
        f"# ragtrain report: run `{run}`",
        "",
        "## Evaluation",
        "",
        "EM, F1 and accuracy are over answerable questions; `correct_refusal` is the share of"
        " unanswerable questions the model declined, `false_refusal` the share of answerable ones."
        " Retrieval `none` is the closed-book contrast.",
        "",
        _markdown_table(rows, COLUMNS),
        "",
    ]
    typed = [
        {
            "model": r["model"],
            "dataset": r["dataset"],
            "retrieval": r["retrieval"],
            "type": kind,
            **m,
        }
        for r in rows
        for kind, m in r.get("by_type", {}).items()
    ]
    if typed:
        text += [
            "## By question type",
            "",
            _markdown_table(typed, ["model", "dataset", "retrieval", "type", "n", *PLOTTED]),
            "",
        ]
    if retrieval_rows:
        text += [
            "## Retrieval",
            "",
            "Answer recall@k: share of answerable questions with a gold answer in the top-k"
            " passages; gold recall@k: share of the gold passages retrieved"
            " (a multi-hop question has two).",
            "",
            _markdown_table(
                retrieval_rows, ["retriever", "dataset", "k", "answer_recall", "gold_recall", "n"]
            ),
            "",
        ]
    products = _product_rows(product_files or [])
    if products:
        text += ["## Training data", "", _markdown_table(products, ["product", "contents"]), ""]
    if training:
        text += [
            "## Training",
            "",
            "Held-out (`dev_`) values are on the product's dev split; for DPO,"
            " `dev_reward_accuracy` is the share of held-out pairs whose chosen answer gets"
            " the higher implicit reward. Curves: `training.png`, and `loss.png` in each"
            " model's folder.",
            "",
            _markdown_table(training, TRAINING_COLUMNS),
            "",
        ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(text), encoding="utf-8")


def write_table(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{r['model']}\n{r['dataset']}/{r['retrieval']}" for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / len(PLOTTED)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows) + 2), 4))
    for i, metric in enumerate(PLOTTED):
        # No value (e.g. no unanswerable questions) draws no bar, not a zero.
        values = [np.nan if r.get(metric) is None else r[metric] for r in rows]
        ax.bar(x + (i - (len(PLOTTED) - 1) / 2) * width, values, width, label=metric)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(ncols=len(PLOTTED), fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_training_plot(model_dirs: list[str], path: Path) -> None:
    """The trained models' loss.png, stacked into one figure (a note if there are none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    images = [(Path(d).name, mpimg.imread(Path(d) / "loss.png")) for d in sorted(model_dirs)]
    if not images:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, "no trained models in this run", ha="center", va="center")
        ax.axis("off")
    else:
        width = max(img.shape[1] for _, img in images)
        height = sum(img.shape[0] for _, img in images)
        fig, axes = plt.subplots(len(images), 1, figsize=(width / 100, height / 100), squeeze=False)
        for ax, (_, img) in zip(axes[:, 0], images, strict=True):
            ax.imshow(img)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
