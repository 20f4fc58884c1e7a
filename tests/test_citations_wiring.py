"""The citations recipe's wiring, without models: the NLI entailment cache, the ALCE
metrics over an evaluation, distillation data from teacher answers, the report's ALCE
section, the config checks of config/citations.yaml and the segment beam per ALCE shape."""

import copy
import json
from pathlib import Path

import pytest
import yaml

import ragtrain.judges.nli as nli
from ragtrain.data.prompts import PromptTemplate
from ragtrain.evaluation.alce_report import alce_section
from ragtrain.evaluation.evaluate import alce_metrics
from ragtrain.generation.engine import Completion, Throughput
from ragtrain.generation.judge import dev_ids
from ragtrain.generation.products import reference_sft
from ragtrain.graph.config import ConfigError, prepare
from ragtrain.judges.nli import Entailment, LazyScorer
from ragtrain.metrics.alce import nli_pairs
from ragtrain.training.rejection import segment_beam
from ragtrain.training.rewards import Rewards

ROOT = Path(__file__).resolve().parents[1]
CITE = ROOT / "resources" / "prompts" / "cite.jinja"
CITATIONS = yaml.safe_load((ROOT / "config" / "citations.yaml").read_text())


class StubScorer:
    """Scores from a table (default `default`); records each call's pairs."""

    def __init__(self, table=None, default=1.0):
        self.table = table or {}
        self.default = default
        self.calls = []

    def scores(self, premises, hypotheses):
        pairs = list(zip(premises, hypotheses, strict=True))
        self.calls.append(pairs)
        return [self.table.get(p, self.default) for p in pairs]


# -- Entailment and LazyScorer -----------------------------------------------------------


def test_prefetch_dedups_and_skips_cached_pairs():
    scorer = StubScorer()
    entailment = Entailment(scorer)
    entailment.prefetch([("p", "h"), ("p", "h"), ("q", "h")])
    entailment.prefetch([("p", "h"), ("r", "h")])
    entailment.prefetch([("q", "h")])  # all cached: no call
    assert scorer.calls == [[("p", "h"), ("q", "h")], [("r", "h")]]
    assert entailment.stats() == {"nli_pairs": 3, "nli_calls": 3}


def test_entails_applies_the_threshold_inclusively_and_reads_the_cache():
    scorer = StubScorer({("p", "at"): 0.5, ("p", "below"): 0.49})
    entailment = Entailment(scorer, threshold=0.5)
    entailment.prefetch([("p", "at"), ("p", "below")])
    assert entailment.entails("p", "at") is True
    assert entailment.entails("p", "below") is False
    assert len(scorer.calls) == 1
    assert entailment.entails("p", "new") is True  # an unseen pair is scored on its own
    assert scorer.calls[-1] == [("p", "new")]
    assert entailment.stats() == {"nli_pairs": 3, "nli_calls": 3}


@pytest.mark.parametrize("threshold", [-0.01, 1.01])
def test_threshold_outside_the_unit_interval_is_rejected(threshold):
    with pytest.raises(ValueError, match="threshold"):
        Entailment(StubScorer(), threshold)


def test_threshold_bounds_are_accepted():
    assert Entailment(StubScorer(), 0.0).threshold == 0.0
    assert Entailment(StubScorer(), 1.0).threshold == 1.0


def test_lazy_scorer_loads_only_on_the_first_scores_call(monkeypatch):
    loads = []

    def load(params):
        loads.append(params)
        return StubScorer(default=0.25)

    monkeypatch.setattr(nli, "load_nli", load)
    params = {"kind": "nli", "scorer": "llm", "path": "/m", "threshold": 0.2, "batch_size": 4}
    lazy = LazyScorer(params)
    assert loads == []
    assert lazy.scores(["p"], ["h"]) == [0.25]
    assert lazy.scores(["p", "q"], ["h", "h"]) == [0.25, 0.25]
    # Loaded once, with the scorer's own settings only (not the judge's kind or threshold).
    assert loads == [{"scorer": "llm", "path": "/m", "batch_size": 4}]


# -- ALCE metrics over an evaluation -----------------------------------------------------

DOCS = [{"title": "Tower", "text": "Built in 1871."}, {"title": "Other", "text": "Tall."}]
ASQA = {
    "id": "a",
    "question": "When was it built?",
    "qa_pairs": [{"question": "When?", "short_answers": ["1871"]}],
    "docs": DOCS,
}
QAMPARI = {"id": "b", "question": "Who?", "answer_groups": [["Alice"], ["Bob"]], "docs": DOCS}
ELI5 = {"id": "c", "question": "Why?", "claims": ["It is tall."], "docs": DOCS}
PLAIN = {"id": "d", "question": "What?", "answers": ["y"]}
TEXTS = ["It was built in 1871 [1]. It is tall [1][2].", "Alice [1], Bob [2].", "Tall [2].", "y"]
EXAMPLES = [ASQA, QAMPARI, ELI5, PLAIN]


class Ordered:
    """An Entailment stand-in: counts prefetch calls; `entails` must find its pair
    prefetched."""

    def __init__(self):
        self.prefetches = []
        self.asked = []

    def prefetch(self, pairs):
        self.prefetches.append(list(pairs))

    def entails(self, premise, hypothesis):
        assert self.prefetches, "entails before prefetch"
        assert (premise, hypothesis) in self.prefetches[0], "a pair not prefetched"
        self.asked.append((premise, hypothesis))
        return True

    def stats(self):
        return {"prefetches": len(self.prefetches)}


def test_alce_metrics_is_none_without_alce_shaped_examples():
    scorer = StubScorer()
    assert alce_metrics([PLAIN], ["y"], Entailment(scorer)) is None
    assert scorer.calls == []


def test_alce_metrics_prefetches_every_pair_once_before_scoring():
    judge = Ordered()
    out = alce_metrics(EXAMPLES, TEXTS, judge)
    assert len(judge.prefetches) == 1 and judge.asked
    expected = [p for ex, t in zip(EXAMPLES[:3], TEXTS, strict=False) for p in nli_pairs(ex, t)]
    assert judge.prefetches[0] == expected
    assert out["nli"] == {"prefetches": 1}


def test_alce_metrics_with_a_real_entailment_calls_the_scorer_once():
    scorer = StubScorer(default=1.0)
    out = alce_metrics(EXAMPLES, TEXTS, Entailment(scorer))
    assert len(scorer.calls) == 1
    assert out["nli"]["nli_calls"] == len(scorer.calls[0]) == out["nli"]["nli_pairs"]
    scores = out["scores"]
    assert scores[3] is None
    assert [s["kind"] for s in scores[:3]] == ["asqa", "qampari", "eli5"]
    assert scores[0]["citation_rec"] == scores[0]["citation_prec"] == 1.0
    assert scores[0]["str_em"] == 1.0 and scores[2]["claims_nli"] == 1.0
    assert scores[1]["qampari_rec"] == 1.0


def test_alce_metrics_aggregates_per_shape_present():
    out = alce_metrics(
        [ASQA, QAMPARI, PLAIN], [TEXTS[0], "Alice [1].", "y"], Entailment(StubScorer())
    )
    assert {"all", "asqa", "qampari"} <= set(out) and "eli5" not in out
    assert (out["all"]["n"], out["all"]["n_asqa"], out["all"]["n_qampari"]) == (2, 1, 1)
    assert out["asqa"]["n"] == 1 and out["asqa"]["str_em"] == 1.0
    assert out["qampari"]["qampari_rec"] == 0.5


def test_alce_metrics_without_entailment_has_no_citation_or_claim_scores():
    out = alce_metrics(EXAMPLES, TEXTS)
    banned = {"citation_rec", "citation_prec", "claims_nli"}
    assert out["nli"] is None
    for s in out["scores"][:3]:
        assert not banned & set(s)
    for key in ("all", "asqa", "qampari", "eli5"):
        assert not banned & set(out[key])
    assert out["asqa"]["str_em"] == 1.0  # the rest is still scored


# -- distillation data and the cite prompt -----------------------------------------------


def cite_examples():
    docs = [{"title": "Tower", "text": "Built in 1871."}]
    refs = {"q0": " Built in 1871 [1]. ", "q1": "A [1].", "q2": None, "q3": "B [1].",
            "q4": "   ", "q5": "C [1]."}  # fmt: skip
    return [
        {"id": i, "question": f"Question {i}?", "docs": docs, **({"reference": r} if r else {})}
        for i, r in refs.items()
    ]


def test_reference_sft_completes_the_cite_prompt_with_the_reference():
    template = PromptTemplate(CITE)
    exs = cite_examples()
    records, stats = reference_sft(exs, template, {"dev_fraction": 0.5, "seed": 3})
    by_id = {e["id"]: e for e in exs}
    assert [r["id"] for r in records] == ["q0", "q1", "q3", "q5"]
    for r in records:
        assert r["prompt"] == template.conversation(by_id[r["id"]])
        assert r["completion"] == [
            {"role": "assistant", "content": by_id[r["id"]]["reference"].strip()}
        ]
    assert records[0]["completion"][0]["content"] == "Built in 1871 [1]."
    assert stats == {"n_examples": 6, "n_kept": 4, "n_without_reference": 2}


def test_reference_sft_dev_split_follows_dev_fraction_and_seed():
    template = PromptTemplate(CITE)
    exs = cite_examples()
    records, _ = reference_sft(exs, template, {"dev_fraction": 0.5, "seed": 3})
    dev = {r["id"] for r in records if r["split"] == "dev"}
    assert dev == dev_ids(["q0", "q1", "q3", "q5"], 0.5, 3) and len(dev) == 2
    again, _ = reference_sft(exs[::-1], template, {"dev_fraction": 0.5, "seed": 3})
    assert {r["id"] for r in again if r["split"] == "dev"} == dev
    none, _ = reference_sft(exs, template, {"dev_fraction": 0.0, "seed": 3})
    assert {r["split"] for r in none} == {"train"}


def test_reference_sft_without_any_reference_names_the_field():
    exs = [e for e in cite_examples() if "reference" not in e]
    with pytest.raises(ValueError, match="`reference`"):
        reference_sft(exs, PromptTemplate(CITE), {})


def test_cite_prompt_numbers_documents_and_asks_lists_only_of_qampari():
    template = PromptTemplate(CITE)
    docs = [{"title": "Tower", "text": "Built in 1871."}, {"title": "Bridge", "text": "Long."}]
    plain = template.render({"question": "When?", "docs": docs})
    listed = template.render({"question": "Who?", "docs": docs, "answer_groups": [["A"]]})
    assert "Document [1](Title: Tower): Built in 1871." in plain
    assert "Document [2](Title: Bridge): Long." in plain
    assert "separate the answers with commas" in listed
    assert "separate the answers with commas" not in plain
    assert "Question: Who?" in listed


# -- the report's ALCE section -----------------------------------------------------------


def write_evaluation(folder, model, str_em, rec, alce=True):
    folder.mkdir(parents=True)
    metrics = {"model": model, "dataset": "cite_test", "retrieval": "source"}
    if alce:
        asqa = {"n": len(str_em), "str_em": sum(str_em) / len(str_em), "length": 7.0}
        metrics["alce"] = {"all": asqa, "asqa": asqa, "nli": {"nli_pairs": 4, "nli_calls": 4}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    lines = [
        {
            "id": f"q{i}",
            "alce": {"kind": "asqa", "str_em": e, "citation_rec": r, "citation_prec": r},
        }
        for i, (e, r) in enumerate(zip(str_em, rec, strict=True))
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(folder / "metrics.json")


def test_alce_section_tables_each_model_and_pairs_them(tmp_path):
    files = [
        write_evaluation(tmp_path / "b", "b", [0.0, 0.5, 0.5], [0.0, 1.0, 0.0]),
        write_evaluation(tmp_path / "a", "a", [1.0, 0.5, 1.0], [1.0, 1.0, 1.0]),
    ]
    text = "\n".join(alce_section(files, seed=1, resamples=50))
    assert "### asqa" in text and "### qampari" not in text
    assert "| a | cite_test | 3 | 0.833 |" in text
    assert "| b | cite_test | 3 | 0.333 |" in text
    assert "| cite_test | a | b | correct | 3 | +0.500 |" in text
    assert "| cite_test | a | b | citation_rec | 3 | +0.667 |" in text


def test_alce_section_is_empty_without_alce_metrics(tmp_path):
    files = [write_evaluation(tmp_path / "a", "a", [1.0], [1.0], alce=False)]
    assert alce_section(files, seed=1, resamples=10) == []


# -- config/citations.yaml checks --------------------------------------------------------


def test_the_citations_config_prepares_with_source_retrieval_on_the_alce_split():
    prepared = prepare(CITATIONS, ROOT / "resources" / "prompts")
    ppo = prepared["models"]["ppo_fg"]
    assert ppo["retrieval"] == "source"
    assert prepared["datasets"][ppo["dataset"]]["split"] in CITATIONS["worlds"]["world"]["alce"]
    assert {e["nli"] for e in prepared["evaluations"]} == {"smol_nli"}


def test_a_reward_naming_an_unknown_nli_judge_is_a_config_error():
    cfg = copy.deepcopy(CITATIONS)
    cfg["models"]["ppo_fg"]["rewards"] = [{"kind": "citation_recall", "nli": "nope"}]
    with pytest.raises(ConfigError, match=r"models\.ppo_fg\.rewards\[0\]\.nli") as err:
        prepare(cfg)
    assert "'nope'" in str(err.value)


def test_evaluate_nli_naming_a_non_nli_judge_is_a_config_error():
    cfg = copy.deepcopy(CITATIONS)
    cfg["evaluate"][0]["nli"] = "rules"
    with pytest.raises(ConfigError, match=r"evaluate\[0\]\.nli"):
        prepare(cfg)


@pytest.mark.parametrize("where", ["models", "evaluate"])
def test_source_retrieval_on_a_world_question_split_is_a_config_error(where):
    cfg = copy.deepcopy(CITATIONS)
    cfg["worlds"]["world"]["questions"] = {"train": 10}
    cfg["datasets"]["plain"] = {"world": "world", "split": "train"}
    if where == "models":
        cfg["models"]["ppo_fg"]["dataset"] = "plain"
    else:
        cfg["evaluate"][0]["datasets"] = ["plain"]
    with pytest.raises(ConfigError, match="question split") as err:
        prepare(cfg)
    assert err.value.key == (
        "models.ppo_fg.retrieval" if where == "models" else "evaluate[0].retrieval"
    )


# -- the segment beam per ALCE shape -----------------------------------------------------


class ByStop:
    """A generator stand-in: a continuation ending in the sampling's stop; records calls."""

    def __init__(self):
        self.calls = []
        self.throughput = Throughput()

    def chat(self, conversations, sampling, seeds=None, prefixes=None):
        questions = [c[-1]["content"].removeprefix("Q: ") for c in conversations]
        self.calls.append({"stop": sampling.stop, "questions": questions})
        end = sampling.stop[0]
        out = [
            [Completion(f" item{k}{end}", 1, finish_reason="stop") for k in range(sampling.n)]
            for _ in conversations
        ]
        self.throughput.add(sum(len(o) for o in out), 0.1)
        return out


def test_segment_beam_uses_each_alce_shapes_stop_and_depth(tmp_path):
    (tmp_path / "t.jinja").write_text("Q: {{ question }}")
    exs = [
        {"id": "l1", "question": "list1", "answers": [], "answer_groups": [["x"]]},
        {"id": "s1", "question": "sent1", "answers": [], "qa_pairs": [{"short_answers": ["x"]}]},
        {"id": "l2", "question": "list2", "answers": [], "answer_groups": [["y"]]},
    ]
    params = {
        "per_dataset": {"qampari": {"segment_stop": [","], "max_segments": 3}},
        "max_segments": 1,
        "segment_stop": ["."],
        "beam": 1,
        "samples_per_beam": 2,
        "seed": 7,
    }
    generator = ByStop()
    rewards = Rewards([{"kind": "length"}])
    records, _ = segment_beam(exs, generator, PromptTemplate(tmp_path / "t.jinja"), rewards, params)
    # Step 1: one call per stop set (the lists together); steps 2 and 3: the lists only.
    assert [(c["stop"], c["questions"]) for c in generator.calls] == [
        ((",",), ["list1", "list2"]),
        ((".",), ["sent1"]),
        ((",",), ["list1", "list2"]),
        ((",",), ["list1", "list2"]),
    ]
    by_id = {r["id"]: r for r in records}
    assert by_id["l1"]["segments"] == by_id["l2"]["segments"] == 3
    assert by_id["s1"]["segments"] == 1
    assert by_id["l1"]["completion"][0]["content"].count(",") == 3
    assert by_id["s1"]["completion"][0]["content"].endswith(".")
