"""The paired bootstrap behind the report's intervals."""

import pytest

from ragtrain.metrics.paired import paired_bootstrap


def test_interval_holds_the_difference_and_narrows_with_more_questions():
    small = paired_bootstrap([1, 0] * 10, [0, 0] * 10, resamples=2000, seed=1)
    large = paired_bootstrap([1, 0] * 200, [0, 0] * 200, resamples=2000, seed=1)
    for result in (small, large):
        assert result["diff"] == 0.5
        assert result["low"] < 0.5 < result["high"]
    assert large["high"] - large["low"] < (small["high"] - small["low"]) / 2
    assert large["p_not_better"] == 0.0


def test_no_difference_spans_zero_and_seed_fixes_the_interval():
    a = [1, 0, 1, 0, 1, 1, 0, 0] * 5
    b = [0, 1, 1, 0, 0, 1, 1, 0] * 5
    first = paired_bootstrap(a, b, seed=7)
    assert first["low"] < 0 < first["high"]
    assert paired_bootstrap(a, b, seed=7) == first
    assert paired_bootstrap(a, b, seed=8) != first


def test_pairing_removes_the_shared_difficulty():
    # b is a plus a constant gain on every question: paired, the gain is certain even
    # though each system's scores vary widely between questions.
    a = [0.0, 1.0, 0.2, 0.9, 0.5, 0.1] * 5
    b = [x + 0.05 for x in a]
    result = paired_bootstrap(b, a, seed=0)
    assert result["low"] == pytest.approx(0.05) and result["high"] == pytest.approx(0.05)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="differ in length: 2 vs 1"):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="no paired examples"):
        paired_bootstrap([], [])
