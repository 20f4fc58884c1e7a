"""Evaluation scoring with a stand-in generator (the real backends run in test_workflow)."""

from ragtrain.data.prompts import PromptTemplate
from ragtrain.evaluation.evaluate import evaluate
from ragtrain.generation.engine import Completion, Throughput
from tests.conftest import ROOT


class Scripted:
    """Answers from a script, so the expected metrics can be computed by hand."""

    def __init__(self, answers):
        self.answers = answers
        self.throughput = Throughput()
        self.seen = []

    def chat(self, conversations, sampling, seeds=None):
        self.seen.extend(conversations)
        self.seeds = seeds
        self.throughput.add(10 * len(conversations), 1.0)
        return [
            [Completion(self.answers[c[-1]["content"].split("Question: ")[-1]], 5)]
            for c in conversations
        ]


EXAMPLES = [
    {
        "id": "1",
        "question": "Where was Marel born?",
        "answers": ["Kesh"],
        "docs": [{"id": "p1", "title": "Marel", "text": "Marel was born in Kesh.", "score": 3.2}],
        "meta": {"type": "single"},
    },
    {
        "id": "2",
        "question": "Who founded Orvane?",
        "answers": ["Tollan Brisk"],
        "docs": [],
        "meta": {"type": "multihop"},
    },
    {
        "id": "3",
        "question": "When was Ilse born?",
        "answers": [],
        "docs": [],
        "meta": {"type": "unanswerable"},
    },
    {
        "id": "4",
        "question": "When was Quorn born?",
        "answers": [],
        "docs": [],
        "meta": {"type": "unanswerable"},
    },
]
SCRIPT = {
    "Where was Marel born?": "Kesh.",  # EM 1
    "Who founded Orvane?": "It was Tollan.",  # EM 0, F1 2*(1/3*1/2)/(1/3+1/2) = 0.4
    "When was Ilse born?": "I don't know.",  # correct refusal
    "When was Quorn born?": "1962",  # made up
}
PARAMS = {
    "model": "m",
    "dataset": "d",
    "retrieval": "bm25",
    "generation": {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": 4},
}


def test_metrics_and_prediction_records():
    template = PromptTemplate(ROOT / "resources/prompts/rag.jinja")
    predictions, metrics = evaluate(EXAMPLES, Scripted(SCRIPT), template, PARAMS)
    assert metrics["em"] == 0.5
    assert metrics["f1"] == 0.7
    assert metrics["accuracy"] == 0.5
    assert metrics["correct_refusal"] == 0.5
    # Example 1's documents hold its answer and it was answered: no false refusal.
    assert metrics["false_refusal"] == 0.0
    assert metrics["n_relevant"] == 1
    assert metrics["refusal_rate"] == 0.25
    # Answerable: "Kesh." correct (docs hold it), "It was Tollan." incorrect (no docs).
    assert (metrics["precision"], metrics["recall"], metrics["pr_f1"]) == (0.5, 0.5, 0.5)
    assert metrics["errors"] == {
        "neither": 1,
        "generation_miss": 0,
        "retrieval_miss": 0,
        "both": 1,
    }
    assert (metrics["n"], metrics["n_answerable"], metrics["n_unanswerable"]) == (4, 2, 2)
    assert metrics["by_type"]["multihop"]["f1"] == 0.4
    assert metrics["by_type"]["unanswerable"]["em"] is None
    assert metrics["tokens_per_second"] == 40.0

    first = predictions[0]
    assert [p["label"] for p in predictions] == ["correct", "incorrect", "refuse", "incorrect"]
    assert [p["relevant"] for p in predictions] == [True, False, False, False]
    assert first["prediction"] == "Kesh."
    assert first["answers"] == ["Kesh"]
    assert first["docs"] == [{"id": "p1", "title": "Marel", "score": 3.2}]
    assert "Document [1] (Title: Marel) Marel was born in Kesh." in first["prompt"]
    assert first["scores"] == {
        "em": 1.0,
        "f1": 1.0,
        "accuracy": 1.0,
        "refusal": False,
        "answerable": True,
    }


def test_a_refusal_is_false_only_where_the_documents_hold_the_answer():
    examples = [
        {**EXAMPLES[0], "question": "Q1"},  # docs hold "Kesh"
        {**EXAMPLES[0], "id": "5", "question": "Q2", "docs": []},  # nothing retrieved
    ]
    script = {"Q1": "I don't know.", "Q2": "I don't know."}
    _, metrics = evaluate(
        examples,
        Scripted(script),
        PromptTemplate(ROOT / "resources/prompts/rag.jinja"),
        PARAMS,
    )
    assert metrics["refused_answerable"] == 1.0
    assert metrics["false_refusal"] == 1.0  # of the one example whose docs hold it
    assert metrics["n_relevant"] == 1
    assert metrics["precision"] is None  # nothing answered
    assert metrics["recall"] == 0.0
    assert metrics["errors"] == {"neither": 0, "generation_miss": 1, "retrieval_miss": 0, "both": 1}


def test_model_verdicts_replace_the_rules_and_agreement_counts_only_theirs():
    from ragtrain.evaluation.judged import agreement, judged_metrics, judged_rows

    predictions = [
        {"id": "1", "answers": ["a"], "label": "correct", "relevant": True},
        {"id": "2", "answers": ["a"], "label": "incorrect", "relevant": False},
        {"id": "3", "answers": [], "label": "refuse", "relevant": False},
    ]
    labels = [
        {"verdict": "correct", "raw": ["Label: correct"]},
        {"verdict": "refuse", "raw": ["Label: refuse"]},
        {"verdict": None, "raw": ["?", "?"]},  # dropped: no verdict
    ]
    relevance = {
        "1": {"verdict": "present", "raw": ["Verdict: present"]},
        "2": {"verdict": "present", "raw": ["Verdict: present"]},
        "3": {"verdict": None, "raw": ["?"]},
    }
    rows = judged_rows(predictions, labels, relevance)
    assert [r["label"] for r in rows] == ["correct", "refuse", None]
    assert [r["relevant"] for r in rows] == [True, True, None]
    metrics = judged_metrics(rows)
    # The model says question 2's documents hold the answer, and it was refused.
    assert metrics["false_refusal"] == 0.5
    assert (metrics["precision"], metrics["recall"]) == (1.0, 0.5)
    assert metrics["n_unjudged"] == 1
    assert metrics["errors"] == {"neither": 1, "generation_miss": 1, "retrieval_miss": 0, "both": 0}
    assert agreement(rows) == {"label": 0.5, "relevance": 0.5}
    rules_only = judged_rows(predictions, None, None)
    assert agreement(rules_only) == {"label": None, "relevance": None}
    assert [r["label"] for r in rules_only] == ["correct", "incorrect", "refuse"]


def test_each_question_is_seeded_by_its_id_whatever_the_order():
    """Sampled evaluations (the self-demos recipe's temperature 0.5): a question's seed
    is the same in any order or company, so two models meet the same per-question seeds."""
    from ragtrain.core.seeds import stable_seed

    generator = Scripted(SCRIPT)
    evaluate(EXAMPLES, generator, PromptTemplate(ROOT / "resources/prompts/rag.jinja"), PARAMS)
    forward = dict(zip([ex["id"] for ex in EXAMPLES], generator.seeds, strict=True))
    evaluate(
        EXAMPLES[::-1], generator, PromptTemplate(ROOT / "resources/prompts/rag.jinja"), PARAMS
    )
    backward = dict(zip([ex["id"] for ex in EXAMPLES[::-1]], generator.seeds, strict=True))
    assert forward == backward == {ex["id"]: stable_seed(4, ex["id"]) for ex in EXAMPLES}
