"""A generated corpus of N passages through the workflow's `corpus` and `index` rules.

The passages are bench/index_scale.py's Zipf text (100 words each), written as a BEIR
`corpus.jsonl`; a config with that corpus (`path:`) and a bm25 retriever (and, with
`--dense ENCODER`, a dense one) is run through Snakemake in `--work`, and each job's peak
RSS and wall time are read from its benchmark file (`logs/<run>/<rule>/<name>.benchmark.tsv`,
Snakemake's `max_rss` and `s`), with the sizes on disk of what it wrote (files an index
links from its corpus counted once, with the corpus).

    python bench/corpus_scale.py [--n 1000000] [--work DIR] [--cores 2]
                                 [--dense ENCODER [--index ivf_flat]]

At 1M passages on 2 cores: about 8 minutes with bm25 only (results in bench/README.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from index_scale import gen_text  # noqa: E402


def write_beir(work: Path) -> Path:
    """corpus.txt as a BEIR corpus.jsonl (`_id`, `title`, `text`), streamed."""
    out = work / "beir.jsonl"
    with (work / "corpus.txt").open() as lines, out.open("w") as f:
        for i, line in enumerate(lines):
            f.write(json.dumps({"_id": f"p{i}", "title": "", "text": line.rstrip("\n")}) + "\n")
    return out


def sizes(folder: Path) -> tuple[int, int]:
    """(bytes of the folder's files, bytes of those not hard-linked from elsewhere)."""
    files = [f for f in folder.rglob("*") if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    own = sum(f.stat().st_size for f in files if f.stat().st_nlink == 1)
    return total, own


def benchmark(path: Path) -> dict:
    with path.open() as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return {"wall_s": float(row["s"]), "max_rss_mb": float(row["max_rss"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--work", help="folder of the corpus and the run (default: a new one)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--dense", help="also a dense retriever with this encoder")
    ap.add_argument("--index", default="ivf_flat", help="the dense retriever's FAISS index")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="corpus_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "beir.jsonl").exists():
        gen_text(work, args.n, 1)
        write_beir(work)
    run = f"corpus_scale_{args.n}"
    retrievers = {"bm25": {"kind": "bm25", "corpus": "wiki"}}
    if args.dense:
        retrievers["dense"] = {
            "kind": "dense",
            "corpus": "wiki",
            "encoder": args.dense,
            "index": args.index,
            "batch_size": 256,
        }
    config = {
        "run": run,
        # The config needs a model; only the corpus and index jobs run, none loads it.
        "models": {"base": {"hub": "HuggingFaceTB/SmolLM2-135M-Instruct"}},
        "corpora": {"wiki": {"path": str(work / "beir.jsonl")}},
    }
    (work / "config.yaml").write_text(json.dumps({**config, "retrievers": retrievers}))
    targets = [f"results/{run}/index/{name}" for name in retrievers]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    cmd += ["--configfile", str(work / "config.yaml"), "--cores", str(args.cores), *targets]
    subprocess.run(cmd, cwd=work, check=True)

    logs, results = work / "logs" / run, work / "results" / run
    source = (work / "beir.jsonl").stat().st_size
    rows = [("corpus", benchmark(logs / "corpus" / "wiki.benchmark.tsv"), results / "corpus")]
    rows += [
        (f"index {name}", benchmark(logs / "index" / f"{name}.benchmark.tsv"), Path(target))
        for name, target in zip(retrievers, targets, strict=True)
    ]
    print(f"\n{args.n:,} passages; input {source / 1e9:.2f} GB (BEIR JSONL)\n")
    print("| job | wall (s) | peak RSS (GB) | written (GB) |")
    print("|---|---:|---:|---:|")
    for job, measured, folder in rows:
        _, own = sizes(work / folder)
        print(
            f"| {job} | {measured['wall_s']:.0f} | {measured['max_rss_mb'] / 1024:.2f}"
            f" | {own / 1e9:.2f} |"
        )


if __name__ == "__main__":
    main()
