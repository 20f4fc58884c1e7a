"""Self-demonstrations: sharding and resuming (fake generator), reproducibility (HF)."""

import pytest

from ragtrain.core.records import RecordError
from ragtrain.core.seeds import stable_seed
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import Completion, Throughput, load_generator
from ragtrain.generation.selfdemo import sample_demos
from ragtrain.graph.kinds import GENERATION_DEFAULTS

PARAMS = {
    "n": 2,
    "shard_size": 5,
    "generation": {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "seed": 3},
}


class FakeGenerator:
    """Stands in for the vLLM / HF backends to test sharding and resuming only: its
    completions are derived from the seed it is given, and it counts its calls."""

    def __init__(self):
        self.throughput = Throughput()
        self.calls = []

    def chat(self, conversations, sampling, seeds=None):
        self.calls.append(len(conversations))
        self.throughput.add(sampling.n * len(conversations), 0.5)
        return [
            [Completion(f"answer {seed} #{k}", k + 1) for k in range(sampling.n)] for seed in seeds
        ]


class Loader:
    def __init__(self):
        self.generators = []

    def __call__(self):
        self.generators.append(FakeGenerator())
        return self.generators[-1]


def never():
    raise AssertionError("the generator must not be loaded")


@pytest.fixture
def template(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(
        "{% for d in docs %}[{{ d.title }}] {{ d.text }}\n{% endfor %}Q: {{ question }}"
    )
    return PromptTemplate(path)


def examples(n=12):
    return [
        {
            "id": f"q{i}",
            "question": f"question {i}?",
            "answers": [f"a{i}"] if i % 3 else [],
            "docs": [{"title": f"T{i}", "text": f"text {i}"}],
        }
        for i in range(n)
    ]


def test_samples_written_in_shards(tmp_path, template):
    exs, loader = examples(), Loader()
    records, stats = sample_demos(exs, loader, template, PARAMS, tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
        "shard-00000.jsonl",
        "shard-00001.jsonl",
        "shard-00002.jsonl",
    ]
    assert len(loader.generators) == 1
    assert loader.generators[0].calls == [5, 5, 2]
    assert [r["id"] for r in records] == [ex["id"] for ex in exs]
    for ex, record in zip(exs, records, strict=True):
        assert {k: record[k] for k in ex} == ex
        assert record["prompt"] == [
            {
                "role": "user",
                "content": f"[T{ex['id'][1:]}] text {ex['id'][1:]}\nQ: {ex['question']}",
            }
        ]
        seed = stable_seed(3, ex["id"])
        assert record["samples"] == [
            {"text": f"answer {seed} #0", "num_tokens": 1},
            {"text": f"answer {seed} #1", "num_tokens": 2},
        ]
    assert stats["n_examples"] == 12
    assert stats["n_samples"] == 24
    assert stats["samples_per_example"] == 2
    assert stats["generated_tokens"] == 36
    assert stats["mean_tokens_per_sample"] == 1.5
    assert stats["shards"] == 3
    assert stats["resumed_shards"] == 0


def test_resume_regenerates_only_the_missing_shard(tmp_path, template):
    exs, work = examples(), tmp_path / "work"
    first, _ = sample_demos(exs, Loader(), template, PARAMS, work)
    (work / "shard-00002.jsonl").unlink()
    loader = Loader()
    again, stats = sample_demos(exs, loader, template, PARAMS, work)
    assert loader.generators[0].calls == [2]
    assert again == first
    assert (stats["shards"], stats["resumed_shards"], stats["n_samples"]) == (3, 2, 24)
    assert (work / "shard-00002.jsonl").exists()


def test_all_shards_done_never_loads_the_generator(tmp_path, template):
    exs, work = examples(), tmp_path / "work"
    first, _ = sample_demos(exs, Loader(), template, PARAMS, work)
    again, stats = sample_demos(exs, never, template, PARAMS, work)
    assert again == first
    assert stats["resumed_shards"] == 3
    assert stats["tokens_per_second"] == 0


def test_samples_do_not_depend_on_shard_size(tmp_path, template):
    exs = examples()
    by5, _ = sample_demos(exs, Loader(), template, PARAMS, tmp_path / "a")
    by4, stats = sample_demos(exs, Loader(), template, {**PARAMS, "shard_size": 4}, tmp_path / "b")
    assert by4 == by5
    assert stats["shards"] == 3


def test_shard_of_other_examples_raises(tmp_path, template):
    work = tmp_path / "work"
    sample_demos(examples(), Loader(), template, PARAMS, work)
    changed = examples()
    changed[1]["id"] = "other"
    with pytest.raises(RecordError, match=r"shard-00000\.jsonl: shard does not match"):
        sample_demos(changed, never, template, PARAMS, work)


def test_no_examples(tmp_path, template):
    records, stats = sample_demos([], never, template, PARAMS, tmp_path / "work")
    assert records == []
    assert (stats["n_examples"], stats["shards"], stats["mean_tokens_per_sample"]) == (0, 0, None)


@pytest.mark.slow
def test_hf_samples_are_reproducible_and_resume(tmp_path, template, tiny_model):
    generation = {
        **GENERATION_DEFAULTS,
        "backend": "hf",
        "temperature": 1.0,
        "max_new_tokens": 4,
    }
    params = {"n": 2, "shard_size": 4, "generation": generation}
    exs = examples(6)
    generators = []

    def loader():
        generators.append(load_generator(str(tiny_model), generation))
        return generators[-1]

    first, _ = sample_demos(exs, loader, template, params, tmp_path / "a")
    second, stats = sample_demos(exs, loader, template, params, tmp_path / "b")
    assert second == first
    assert stats["shards"] == 2 and stats["n_samples"] == 12
    assert all(len(r["samples"]) == 2 for r in first)
    assert all(0 < s["num_tokens"] <= 4 for r in first for s in r["samples"])
    assert any(r["samples"][0] != r["samples"][1] for r in first)  # sampled, not greedy
    # Resume with a generator that has already drawn samples: the per-example seeds
    # still give the same records.
    (tmp_path / "b" / "shard-00001.jsonl").unlink()
    resumed, stats = sample_demos(exs, lambda: generators[-1], template, params, tmp_path / "b")
    assert resumed == first
    assert stats["resumed_shards"] == 1


_VLLM_RESUME = """
import json, sys
from pathlib import Path
from ragtrain.graph.kinds import GENERATION_DEFAULTS
from ragtrain.generation.engine import load_generator
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.selfdemo import sample_demos

if __name__ == "__main__":
    model, template, work = sys.argv[1], PromptTemplate(sys.argv[2]), Path(sys.argv[3])
    generation = {**GENERATION_DEFAULTS, "backend": "vllm", "temperature": 1.0,
                  "max_new_tokens": 4, "max_model_len": 1024}
    params = {"n": 2, "shard_size": 3, "generation": generation}
    exs = [{"id": f"q{i}", "question": f"Where was person {i} born?", "answers": ["X"],
            "docs": []} for i in range(6)]
    engine = load_generator(model, generation)
    first, _ = sample_demos(exs, lambda: engine, template, params, work)
    (work / "shard-00000.jsonl").unlink()
    resumed, stats = sample_demos(exs, lambda: engine, template, params, work)
    print("RESULT " + json.dumps({"first": first, "resumed": resumed, "stats": stats}))
"""


@pytest.mark.slow
def test_vllm_samples_resume_as_an_uninterrupted_run(tmp_path, template, tiny_model):
    """vLLM on CPU, in a fresh process as the self-demos stage runs it: each request is
    seeded, so a shard drawn after another equals the same shard drawn first, which is
    what a resumed run does (tests/test_determinism.py: the real model, fresh processes)."""
    import json
    import subprocess
    import sys

    script = tmp_path / "resume.py"
    script.write_text(_VLLM_RESUME)
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_model), str(template.path), str(tmp_path / "w")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    first, resumed = result["first"], result["resumed"]
    assert any(r["samples"][0] != r["samples"][1] for r in first)  # sampled, not greedy
    assert result["stats"]["resumed_shards"] == 1
    assert resumed == first
