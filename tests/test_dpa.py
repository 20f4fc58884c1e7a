"""DPA-RAG's pieces without a model: the four-way document labels on hand-made answers,
the reranker records built from them (and read back by the DPA-RAG loader), the
pre-aligned SFT data, query augmentation's NLI filter on hand-made contradictions, the
config checks of the new kinds, and reranked retrieval with a stand-in scorer."""

import json
from pathlib import Path

import pytest
import yaml

from ragtrain.core.records import RecordError
from ragtrain.data.preferences import load_pairs
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.doc_preferences import (
    helpful_completion,
    knowledge_label,
    label_documents,
    pre_aligned_records,
    reranker_record,
    reranker_records,
)
from ragtrain.generation.products import reference_sft
from ragtrain.generation.query_augment import check_strategies, clean_rewrite, filter_rewrites
from ragtrain.graph.config import ConfigError, prepare
from ragtrain.judges.nli import Entailment
from ragtrain.metrics.qa import aggregate, score_example

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "resources" / "prompts"
GOLD = ["Mira Okafor"]


@pytest.mark.parametrize(
    ("without", "with_doc", "f1_label", "correct_label"),
    [
        ("Mira Okafor", "Mira Okafor", "both_correct", "both_correct"),
        ("I don't know", "Mira Okafor", "aligned", "aligned"),
        ("Mira Okafor", "Jon Bell", "unaligned", "unaligned"),
        ("Jon Bell", "Ada Stone", "both_incorrect", "both_incorrect"),
        # F1 rises (half the name) although neither answer holds the gold one: the paper's
        # F1 rule calls it aligned, containment calls both wrong.
        ("Jon Bell", "Mira", "aligned", "both_incorrect"),
        # Both right by containment, but the longer answer's F1 is lower: unaligned by F1.
        ("Mira Okafor", "it was Mira Okafor of Kesh", "unaligned", "both_correct"),
    ],
)
def test_four_way_labels_by_either_rule(without, with_doc, f1_label, correct_label):
    assert knowledge_label(without, with_doc, GOLD, "f1") == f1_label
    assert knowledge_label(without, with_doc, GOLD, "correct") == correct_label


def test_an_unknown_rule_is_named():
    with pytest.raises(ValueError, match="label_rule: expected one of f1, correct"):
        knowledge_label("a", "b", GOLD, "bleu")


def _doc(i: int, text: str | None = None) -> dict:
    return {"id": f"p{i}", "title": f"T{i}", "text": text or f"passage {i}"}


def _labelled(labels: list[str], qid: str = "q1") -> dict:
    return {
        "id": qid,
        "question": "Who founded Kesh?",
        "answers": GOLD,
        "split": "train",
        "docs": [{**_doc(i), "label": label} for i, label in enumerate(labels)],
    }


def test_label_documents_keeps_an_augmented_question_in_its_original_s_split():
    examples = [
        {"id": f"q{i}", "question": f"question {i}", "answers": GOLD, "docs": [_doc(0), _doc(1)]}
        for i in range(10)
    ]
    examples += [
        {**ex, "id": f"{ex['id']}~rephrase", "meta": {"augmented_from": ex["id"]}}
        for ex in examples[:10]
    ]
    closed = {ex["id"]: "I don't know" for ex in examples}
    with_doc = {f"{ex['id']}#{i}": ("Mira Okafor" if i == 0 else "no") for ex in examples
                for i in range(2)}  # fmt: skip
    records, stats = label_documents(examples, closed, with_doc, {"dev_fraction": 0.3})
    split = {r["id"]: r["split"] for r in records}
    assert sum(s == "dev" for s in split.values()) == 6  # 3 originals and their rewrites
    for i in range(10):
        assert split[f"q{i}"] == split[f"q{i}~rephrase"]
    assert stats["labels"] == {"both_correct": 0, "aligned": 20, "unaligned": 0,
                               "both_incorrect": 20}  # fmt: skip
    assert stats["closed_book_accuracy"] == 0.0
    assert records[0]["docs"][0]["label"] == "aligned"


def test_reranker_record_ranks_one_document_per_tier_best_first():
    item = _labelled(["both_incorrect", "unaligned", "aligned", "both_correct", "aligned"])
    record = reranker_record(item, {"positive": ["aligned"], "negative": ["unaligned"]})
    # aligned (p2, the first of its tier), both_correct (p3), both_incorrect (p0), unaligned (p1)
    assert record["rank_list"] == [
        " Title: T2 Content: passage 2",
        " Title: T3 Content: passage 3",
        " Title: T0 Content: passage 0",
        " Title: T1 Content: passage 1",
    ]
    assert record["positive"] == [" Title: T2 Content: passage 2", " Title: T4 Content: passage 4"]
    assert record["negative"] == [" Title: T1 Content: passage 1"]
    label, text = record["classification"]["label"], record["classification"]["text"]
    assert (label == 1 and text in record["positive"]) or (
        label == 2 and text in record["negative"]
    )


def test_reranker_records_hold_nothing_without_signal_and_balance_the_classes():
    params = {"positive": ["aligned"], "negative": ["both_incorrect"]}
    assert reranker_record(_labelled(["both_correct"]), params) is None
    items = [_labelled(["aligned", "both_incorrect"], qid=f"q{i}") for i in range(200)]
    _, stats = reranker_records([*items, _labelled(["both_correct"], "q_none")], params)
    assert stats["n_without_signal"] == 1 and stats["n_records"] == 200
    # The class is drawn first, per question: about half each.
    assert 70 < stats["classification"]["aligned"] < 130
    assert stats["ranking_pairs"] == 200 and stats["with_contrastive"] == 200
    # Positives without negatives contrast nothing: neither side is kept.
    one_sided = reranker_record(_labelled(["aligned", "both_correct"]), params)
    assert one_sided["positive"] == one_sided["negative"] == []


def test_reranker_records_read_back_with_the_dpa_rag_loader(tmp_path):
    records, _ = reranker_records(
        [_labelled(["aligned", "unaligned", "both_incorrect"])],
        {"positive": ["aligned"], "negative": ["unaligned", "both_incorrect"]},
    )
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    [loaded] = load_pairs(path, "dpa_rag")
    assert loaded["query"] == "Who founded Kesh?"
    assert loaded["rank_list"][0] == {"title": "T0", "text": "passage 0"}
    assert loaded["positive"] == [{"title": "T0", "text": "passage 0"}]
    assert len(loaded["negative"]) == 2


def _dpa_line(**changes) -> str:
    record = {
        "query": "q",
        "classification": {"text": " Title: A Content: a", "label": 1},
        "rank_list": [" Title: A Content: a", " Title: B Content: b"],
        "positive": [" Title: A Content: a"],
        "negative": [" Title: B Content: b"],
        **changes,
    }
    return json.dumps(record) + "\n"


def test_a_document_ranked_twice_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "reranker.jsonl"
    twice = [" Title: A Content: a", " Title: B Content: b", " Title: A Content: a"]
    path.write_text(_dpa_line() + _dpa_line(rank_list=twice))
    with pytest.raises(RecordError) as error:
        load_pairs(path, "dpa_rag")
    message = str(error.value)
    assert f"{path}:2:" in message and "rank_list[2]" in message and "\n" not in message


def test_a_label_outside_the_known_ones_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "reranker.jsonl"
    path.write_text(_dpa_line() + _dpa_line() + _dpa_line(classification={"text": "x", "label": 3}))
    with pytest.raises(RecordError, match=rf"{path}:3: .*label should be 1 or 2, got 3"):
        load_pairs(path, "dpa_rag")


def test_pre_aligned_data_names_the_helpful_documents_then_answers():
    assert (
        helpful_completion(
            [{"label": "both_incorrect"}, {"label": "aligned"}, {"label": "both_correct"}],
            GOLD,
            ["aligned", "both_correct"],
        )
        == "Helpful documents: [2], [3]\nAnswer: Mira Okafor"
    )
    assert helpful_completion([{"label": "unaligned"}], GOLD, ["aligned"]) == (
        "Helpful documents: none\nAnswer: Mira Okafor"
    )
    original = _labelled(["aligned", "both_incorrect"])
    rewrite = {**_labelled(["aligned"], "q1~sparql"), "meta": {"augmented_from": "q1"}}
    template = PromptTemplate(PROMPTS / "pre_aligned.jinja")
    records, stats = pre_aligned_records([original, rewrite], template, {"augmented": False})
    assert [r["id"] for r in records] == ["q1"] and stats["helpful_documents"] == 1
    prompt = records[0]["prompt"][0]["content"]
    assert "Document [2] (Title: T1) passage 1" in prompt and "Who founded Kesh?" in prompt
    assert records[0]["completion"][0]["content"].startswith("Helpful documents: [1]\n")
    records, _ = pre_aligned_records([original, rewrite], template, {})
    assert len(records) == 2


def test_clean_rewrite_takes_the_question_out_of_the_reply():
    assert clean_rewrite("Rewritten question: Who set up Kesh?\nextra", "rephrase") == (
        "Who set up Kesh?"
    )
    assert clean_rewrite('"Who set up Kesh?"', "complexity") == "Who set up Kesh?"
    assert clean_rewrite(
        "1. Who is Mira?\n2. What did she found?\n3. When?\n4. x", "decompose"
    ) == ("Who is Mira? What did she found? When?")
    assert clean_rewrite("   \n", "rephrase") == ""


class FakeNLI:
    """Entailment by hand: the pairs listed entail, every other pair does not."""

    def __init__(self, entailed: set[tuple[str, str]]):
        self.entailed = entailed
        self.asked: list[tuple[str, str]] = []

    def scores(self, premises, hypotheses):
        pairs = list(zip(premises, hypotheses, strict=True))
        self.asked += pairs
        return [0.9 if p in self.entailed else 0.1 for p in pairs]


def test_the_nli_filter_drops_rewrites_that_contradict_the_original_on_checked_strategies():
    q = "Who founded Kesh?"
    examples = [{"id": "q1", "question": q, "answers": GOLD}]
    rewrites = {
        "rephrase": {"q1": "Who was the founder of Kesh?"},  # entailed one way: kept
        "complexity": {"q1": "Who did not found Kesh?"},  # a contradiction: dropped
        "decompose": {"q1": "Who founded Kesh?"},  # a copy: dropped before NLI
        "sparql": {"q1": "SELECT ?x WHERE { ?x founded Vell }"},  # not checked: kept
    }
    scorer = FakeNLI({(q, "Who was the founder of Kesh?")})
    params = {"augment": list(rewrites), "nli_checked": ["rephrase", "complexity", "decompose"]}
    kept, verdicts, stats = filter_rewrites(examples, rewrites, params, Entailment(scorer, 0.5))
    assert [k["id"] for k in kept] == ["q1~rephrase", "q1~sparql"]
    assert kept[0] == {
        "id": "q1~rephrase",
        "question": "Who was the founder of Kesh?",
        "answers": GOLD,
        "meta": {"augmented_from": "q1", "strategy": "rephrase"},
    }
    by_strategy = stats["by_strategy"]
    assert by_strategy["complexity"] == {"generated": 1, "kept": 0, "dropped_nli": 1,
                                         "dropped_unchanged": 0, "nli_checked": True}  # fmt: skip
    assert by_strategy["decompose"]["dropped_unchanged"] == 1
    assert by_strategy["sparql"] == {"generated": 1, "kept": 1, "dropped_nli": 0,
                                     "dropped_unchanged": 0, "nli_checked": False}  # fmt: skip
    # Both directions asked, for the checked, non-empty, changed rewrites only.
    assert set(scorer.asked) == {
        (q, "Who was the founder of Kesh?"), ("Who was the founder of Kesh?", q),
        (q, "Who did not found Kesh?"), ("Who did not found Kesh?", q),
    }  # fmt: skip
    assert verdicts[1]["reason"] == "nli" and verdicts[1]["entailment"] == 0.1


def test_without_a_judge_every_changed_rewrite_is_kept():
    examples = [{"id": "q1", "question": "Who founded Kesh?", "answers": GOLD}]
    rewrites = {"rephrase": {"q1": "Who did not found Kesh?"}}
    kept, _, stats = filter_rewrites(examples, rewrites, {"augment": ["rephrase"]}, None)
    assert len(kept) == 1 and stats["by_strategy"]["rephrase"]["nli_checked"] is False


def test_strategy_lists_are_checked():
    assert check_strategies(["rephrase"], ["rephrase"]) is None
    assert check_strategies(["paraphrase"], [])[0] == "augment"
    assert check_strategies(["rephrase"], ["sparql"]) == (
        "nli_checked", "'sparql' is not among `augment`"
    )  # fmt: skip


def test_reference_sft_can_train_on_the_gold_answer():
    examples = [
        {"id": "a", "question": "q?", "answers": ["Kesh", "Vell"], "docs": []},
        {"id": "b", "question": "r?", "answers": [], "docs": []},
    ]
    template = PromptTemplate(PROMPTS / "rag.jinja")
    records, stats = reference_sft(examples, template, {"target": "answer", "dev_fraction": 0})
    assert [r["completion"][0]["content"] for r in records] == ["Kesh"]
    assert stats["n_without_answer"] == 1
    with pytest.raises(ValueError, match="target: expected one of reference, answer"):
        reference_sft(examples, template, {"target": "teacher"})


def test_hits_at_1_is_the_share_of_answers_holding_a_gold_one():
    scores = [score_example("It was Mira Okafor.", GOLD), score_example("Jon", GOLD)]
    assert aggregate(scores)["hits@1"] == 0.5


# Config checks of the new kinds: each names its key.
def _config(**changes) -> dict:
    config = yaml.safe_load((ROOT / "config" / "dpa.yaml").read_text())
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = config
        for key in path:
            node = node[key]
        node[last] = value
    return config


def test_the_recipe_config_prepares():
    config = prepare(_config(), prompts_dir=PROMPTS)
    assert config["retrievers"]["rerank_mgda"]["n"] == 20
    assert config["models"]["reranker_cls"]["losses"] == ["classification"]
    assert config["products"]["augmented"]["nli_checked"] == ["rephrase", "complexity", "decompose"]


@pytest.mark.parametrize(
    ("changes", "key", "reason"),
    [
        ({"retrievers.rerank_mgda.first": "rerank_cls"}, "retrievers.rerank_mgda.first",
         "reorders a bm25 or dense retriever's list"),
        ({"retrievers.rerank_mgda.reranker": "sft"}, "retrievers.rerank_mgda.reranker",
         "expected a reranker model, got 'sft' (sft)"),
        ({"retrievers.rerank_mgda.n": 2}, "retrievers.rerank_mgda.n", "keeps k=3"),
        ({"models.reranker_cls.weights": {"ranking": 1.0}}, "models.reranker_cls.weights",
         "'ranking', which is not among `losses`"),
        ({"products.augmented.nli_checked": ["sparql"],
          "products.augmented.augment": ["rephrase"]}, "products.augmented.nli_checked",
         "not among `augment`"),
        ({"products.labels.positive": ["aligned", "both_incorrect"]}, "products.labels.negative",
         "'both_incorrect' is also among `positive`"),
        ({"products.labels.retrieval": "none"}, "products.labels.retrieval", "not `none`"),
        ({"products.augmented.nli": "base"}, "products.augmented.nli", "unknown judge"),
        ({"datasets.train_aug.from": "labels"}, "datasets.train_aug.from",
         "a qa dataset is made from a query_augment product"),
    ],
)  # fmt: skip
def test_bad_dpa_settings_name_their_key(changes, key, reason):
    with pytest.raises(ConfigError) as error:
        prepare(_config(**changes), prompts_dir=PROMPTS)
    assert str(error.value).startswith(f"config key {key}:"), str(error.value)
    assert reason in str(error.value)


def test_reranked_retrieval_keeps_the_best_scored_of_the_first_stage_top_n(tmp_path):
    from ragtrain.retrieval.index import Index, build_index
    from ragtrain.retrieval.rerank import rerank_examples

    corpus = [_doc(i, f"Kesh record {i}" + (" founded by Mira Okafor" if i == 4 else ""))
              for i in range(6)]  # fmt: skip
    build_index(corpus, {"kind": "bm25", "k1": 1.5, "b": 0.75, "method": "lucene",
                         "stopwords": "en"}, tmp_path / "index")  # fmt: skip
    examples = [{"id": "q1", "question": "Kesh record", "answers": GOLD}]

    def prefers_the_answer(question, docs):
        return [1.0 if "Mira" in d["text"] else 0.0 for d in docs]

    out, stats = rerank_examples(
        examples, Index(tmp_path / "index"), prefers_the_answer, {"n": 6, "k": 1}
    )
    assert out[0]["docs"][0]["id"] == "p4" and out[0]["docs"][0]["first_stage_rank"] >= 1
    assert stats["answer_recall@1"] == 1.0 and stats["answer_recall@6"] == 1.0
    assert stats["reranked_minus_first_stage"]["n"] == 1
    with pytest.raises(ValueError, match=r"n \(1\) must be at least k \(2\)"):
        rerank_examples(examples, Index(tmp_path / "index"), prefers_the_answer, {"n": 1, "k": 2})
