"""Sampling strategies of self-demos (a recording fake engine; the real one runs in the
recipe's e2e test) and their config: the paper's nine, their checks and references."""

import pytest

from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import Completion, Throughput
from ragtrain.generation.selfdemo import sample_demos
from ragtrain.generation.strategies import (
    filled_strategies,
    load_strategies,
    paper_strategies,
)
from ragtrain.graph.config import ConfigError, prepare
from tests.conftest import ROOT

PROMPTS = ROOT / "resources/prompts"
GENERATION = {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": 3}


class Recording:
    """Answers `first <seed>` to a first turn and `Here is the summary: short <seed>` to
    a follow-up; keeps every conversation and sampling it was asked."""

    def __init__(self):
        self.throughput = Throughput()
        self.asked = []

    def chat(self, conversations, sampling, seeds=None, prefixes=None):
        self.asked += [(c, sampling, s) for c, s in zip(conversations, seeds, strict=True)]
        out = []
        for conv, seed in zip(conversations, seeds, strict=True):
            follow = len(conv) > 2 and conv[-2]["role"] == "assistant"
            text = "Here is the summary: short {}" if follow else "first {}"
            out.append([Completion(text.format(seed + k), 2) for k in range(sampling.n)])
        return out


def examples():
    return [
        {"id": f"q{i}", "question": f"Who is {i}?", "answers": ["x"],
         "docs": [{"title": "T", "text": f"doc {i}"}]}
        for i in range(3)
    ]  # fmt: skip


TEMPLATES = {n: str(PROMPTS / f"{n}.jinja") for n in
             ("sys_refuse", "sys_rag", "docs_question", "question", "summarize")}  # fmt: skip
SEARCHES = {
    "ps_rag": [{"prompt": f"RAG prompt {r}"} for r in (1, 2, 3)],
    "ps_norag": [{"prompt": f"Closed prompt {r}"} for r in (1, 2, 3)],
}


def test_the_papers_nine_sample_with_their_prompts_and_keep_the_summaries(tmp_path):
    spec = filled_strategies(
        {"strategies": "paper", "searches": {"rag": "ps_rag", "no_rag": "ps_norag"}}
    )
    assert [s["name"] for s in spec] == [
        "no_rag_1", "no_rag_2", "no_rag_3", "rag_1", "rag_2", "rag_3", "refuse"
    ]  # fmt: skip
    assert sum(s["n"] for s in spec) == 9
    strategies = load_strategies(spec, TEMPLATES, SEARCHES)
    engine = Recording()
    params = {"n": 4, "shard_size": 2, "generation": GENERATION}
    records, stats = sample_demos(
        examples(), lambda: engine, PromptTemplate(PROMPTS / "rag.jinja"), params,
        tmp_path / "work", strategies=strategies,
    )  # fmt: skip
    assert stats["samples_per_example"] == 9 and stats["n_samples"] == 27
    assert stats["strategies"]["refuse"] == 3
    first = records[0]
    # Trained on the product's own prompt, whatever strategy answered.
    assert first["prompt"] == PromptTemplate(PROMPTS / "rag.jinja").conversation(examples()[0])
    assert [s["strategy"] for s in first["samples"]].count("refuse") == 3
    assert all(s["text"].startswith("short ") for s in first["samples"])
    assert all(s["first_turn"].startswith("first ") for s in first["samples"])
    firsts = [(c, sampling) for c, sampling, _ in engine.asked if len(c) == 2]
    systems = {c[0]["content"] for c, _ in firsts}
    assert {"Closed prompt 2", "RAG prompt 3"} <= systems
    # Without retrieval the documents are not shown; temperature 1.0 by default.
    closed = [c for c, _ in firsts if c[0]["content"].startswith("Closed")]
    assert all("doc " not in c[1]["content"] for c in closed)
    rag = [c for c, _ in firsts if c[0]["content"].startswith("RAG")]
    assert all("doc " in c[1]["content"] for c in rag)
    assert {sampling.temperature for _, sampling in firsts} == {1.0}
    # A strategy's requests are seeded apart from another's.
    seeds = [s for c, _, s in engine.asked if len(c) == 2]
    assert len(set(seeds)) == len(seeds)


def test_a_rank_beyond_the_search_is_named():
    spec = [{"name": "deep", "search": "ps_rag", "rank": 7, "user": "question"}]
    spec = filled_strategies({"strategies": spec})
    with pytest.raises(ValueError, match="rank 7, but search 'ps_rag' found 3 prompts"):
        load_strategies(spec, TEMPLATES, SEARCHES)


def base_config(**demos):
    return {
        "run": "t",
        "worlds": {"w": {"questions": {"train": 4}}},
        "corpora": {"w": {"world": "w"}},
        "retrievers": {"bm25": {"kind": "bm25", "corpus": "w"}},
        "datasets": {"train": {"world": "w", "split": "train"}},
        "models": {"base": {"gguf": "x.gguf"}},
        "judges": {"score": {"kind": "score", "model": "base"},
                   "pick": {"kind": "pick", "model": "base"}},
        "products": {
            "ps_rag": {"kind": "prompt_search", "model": "base", "dataset": "train",
                       "retrieval": "bm25", "judge": "score"},
            "ps_norag": {"kind": "prompt_search", "model": "base", "dataset": "train",
                         "judge": "score", "seeds": ["sys_no_rag"]},
            "demos": {"kind": "self_demos", "model": "base", "dataset": "train",
                      "retrieval": "bm25", **demos},
            "cup": {"kind": "tournament", "from": "demos", "judge": "pick"},
        },
    }  # fmt: skip


def test_paper_strategies_are_spelled_out_in_the_prepared_config():
    cfg = prepare(
        base_config(strategies="paper", searches={"rag": "ps_rag", "no_rag": "ps_norag"}),
        prompts_dir=PROMPTS,
    )
    strategies = cfg["products"]["demos"]["strategies"]
    assert strategies == [
        {**s, "user": "docs_question" if s["retrieval"] else "question"}
        for s in paper_strategies({"rag": "ps_rag", "no_rag": "ps_norag"})
    ]
    assert cfg["products"]["ps_rag"]["prompt"] == "docs_question"
    assert cfg["products"]["ps_norag"]["prompt"] == "question"
    assert cfg["products"]["cup"]["rejected"] == "all"


@pytest.mark.parametrize(
    ("demos", "key", "message"),
    [
        ({"strategies": "paper", "searches": {"rag": "ps_rag"}}, "products.demos.searches",
         "needs searches.rag and searches.no_rag"),
        ({"strategies": [{"name": "a", "system": "sys_rag", "search": "ps_rag"}]},
         "products.demos.strategies[0]", "exactly one of `system`"),
        ({"strategies": [{"name": "a", "system": "sys_rag"}, {"name": "a", "system": "x"}]},
         "products.demos.strategies[1].name", "'a' names two strategies"),
        ({"strategies": [{"name": "a", "system": "sys_rag", "temp": 1}]},
         "products.demos.strategies[0].temp", "unknown key"),
        ({"strategies": [{"name": "a", "search": "cup"}]},
         "products.demos.strategies[0].search", "expected a prompt_search product, got 'cup'"),
        ({"strategies": [{"name": "a", "system": "no_such_template"}]},
         "products.demos", "no no_such_template.jinja"),
    ],
)  # fmt: skip
def test_bad_strategies_name_their_key(demos, key, message):
    with pytest.raises(ConfigError, match=message) as error:
        prepare(base_config(**demos), prompts_dir=PROMPTS)
    assert error.value.key == key


def test_a_search_on_a_model_trained_from_its_own_demos_is_a_cycle():
    cfg = base_config(strategies=[{"name": "a", "search": "ps_rag"}])
    cfg["products"]["sft_data"] = {"kind": "sft_data", "from": "cup"}
    cfg["models"]["sft"] = {"kind": "sft", "init": "base", "data": "sft_data"}
    cfg["products"]["ps_rag"]["model"] = "sft"
    with pytest.raises(ConfigError, match="cycle"):
        prepare(cfg, prompts_dir=PROMPTS)


def test_judges_of_the_wrong_kind_are_refused():
    cfg = base_config()
    cfg["products"]["cup"]["judge"] = "score"
    with pytest.raises(ConfigError, match="expected a pick judge, got 'score'"):
        prepare(cfg, prompts_dir=PROMPTS)


def test_config_readme_documents_every_strategy_key():
    import re

    from ragtrain.generation.strategies import STRATEGY_DOCS

    text = (ROOT / "config/README.md").read_text()
    section = text.split("#### Sampling strategies")[1].split("\n### ")[0]
    assert set(re.findall(r"^\| `(\w+)` \|", section, re.M)) == set(STRATEGY_DOCS)
