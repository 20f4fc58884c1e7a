"""ALCE citation parsing (ragtrain.data.citations): statements with their spans and
citations, list items of QAMPARI answers, citation removal and NLI premises."""

import pytest

from ragtrain.data.citations import (
    Citation,
    alce_kind,
    citations,
    premise,
    remove_citations,
    segments,
)

DOCS = [{"title": f"T{k}", "text": f"text {k}"} for k in range(1, 6)]


def spans(text, *args):
    return [text[s.start : s.end] for s in segments(text, *args)]


# -- sentences ---------------------------------------------------------------------------


def test_sentence_spans_cover_each_sentence_with_its_citations():
    text = "It was built in 1871 [1]. It burned [2][3].  Then it was rebuilt."
    assert spans(text) == ["It was built in 1871 [1].", "It burned [2][3].", "Then it was rebuilt."]


def test_citations_after_the_full_stop_belong_to_the_sentence_before():
    text = "It was built in 1871. [1] Next it burned. [2][3]\nThe end."
    segs = segments(text)
    assert spans(text) == ["It was built in 1871. [1]", "Next it burned. [2][3]", "The end."]
    assert [s.docs for s in segs] == [[1], [2, 3], []]
    assert segs[0].claim == "It was built in 1871."


def test_bracket_forms_all_count_and_each_citation_ends_right_after_its_number():
    text = "Alpha [12]. Beta [1][3]. Gamma [4, 15] here."
    segs = segments(text)
    assert [[c.doc for c in s.citations] for s in segs] == [[12], [1, 3], [4, 15]]
    for seg in segs:
        for c in seg.citations:
            number = str(c.doc)
            assert text[c.end - len(number) : c.end] == number
            assert text[c.end] in "],"
    assert segs[2].citations[0] == Citation(4, text.index("4") + 1)


def test_claim_and_hypothesis_are_citation_free():
    [seg] = segments("The tower is tall [1, 2][3] indeed.")
    assert seg.claim == seg.hypothesis == "The tower is tall indeed."


def test_segment_docs_are_deduplicated_in_written_order():
    [seg] = segments("Done [2][1][2] ok [1].")
    assert [c.doc for c in seg.citations] == [2, 1, 2, 1]
    assert seg.docs == [2, 1]


def test_empty_text_has_no_segments():
    assert segments("") == [] and segments("   \n ") == []


# -- QAMPARI lists -----------------------------------------------------------------------


def test_qampari_items_split_at_commas_but_not_inside_a_citation_group():
    text = "Alice [1], Bob [1, 2], Carol [3]."
    segs = segments(text, "qampari", "Who?")
    assert spans(text, "qampari", "Who?") == ["Alice [1]", "Bob [1, 2]", "Carol [3]"]
    assert [s.claim for s in segs] == ["Alice", "Bob", "Carol"]
    assert [s.docs for s in segs] == [[1], [1, 2], [3]]


def test_qampari_hypothesis_is_the_question_then_the_item():
    segs = segments("Alice, Bob.", "qampari", "Who founded it?")
    assert [s.hypothesis for s in segs] == ["Who founded it? Alice", "Who founded it? Bob"]
    assert segs[-1].claim == "Bob"  # the final full stop dropped


def test_qampari_citations_alone_after_the_last_comma_cite_the_item_before():
    text = "Alice [1], Carol [3], [4]."
    segs = segments(text, "qampari", "Who?")
    assert [s.claim for s in segs] == ["Alice", "Carol"]
    assert segs[1].docs == [3, 4]
    assert text[segs[1].start : segs[1].end] == "Carol [3], [4]"
    assert text[segs[1].citations[1].end - 1] == "4"


# -- helpers -----------------------------------------------------------------------------


def test_remove_citations_drops_brackets_and_the_spaces_before_them():
    assert remove_citations("Built in 1871 [1][2]. Then [1, 2] rebuilt [3] .") == (
        "Built in 1871. Then rebuilt."
    )


def test_citations_lists_every_cited_document_in_order_with_repeats():
    assert citations("a [1][2] b [3, 4] c [1] d [10]") == [1, 2, 3, 4, 1, 10]
    assert citations("no citations (1) here") == []


@pytest.mark.parametrize(
    "example, kind",
    [
        ({"qa_pairs": [{"short_answers": ["x"]}]}, "asqa"),
        ({"answer_groups": [["x"]]}, "qampari"),
        ({"claims": ["x"]}, "eli5"),
        ({"answers": ["x"]}, None),
        ({"qa_pairs": [], "answer_groups": [], "claims": []}, None),  # empty fields: no shape
    ],
)
def test_alce_kind_by_the_fields_an_example_carries(example, kind):
    assert alce_kind(example) == kind


def test_premise_joins_the_cited_documents_title_then_text():
    assert premise(DOCS, [2]) == "Title: T2\ntext 2"
    assert premise(DOCS, [3, 1]) == "Title: T3\ntext 3\nTitle: T1\ntext 1"


@pytest.mark.parametrize("cited", [[0], [6], [1, 6], []])
def test_premise_is_none_for_out_of_range_or_no_citation(cited):
    assert premise(DOCS, cited) is None
