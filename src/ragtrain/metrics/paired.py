"""Paired bootstrap: the difference of two systems' means on the same examples, with a
percentile confidence interval from resampling the examples (Efron & Tibshirani; the
test used for MT and QA system comparisons, e.g. Koehn 2004)."""

from __future__ import annotations

from collections.abc import Sequence

RESAMPLES = 1000


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """mean(a) - mean(b) over paired per-example scores, its `level` interval, and the
    share of resamples where the difference is not above zero (a one-sided p-value)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores differ in length: {len(a)} vs {len(b)}")
    if not a:
        raise ValueError("no paired examples")
    if resamples < 1:
        raise ValueError(f"resamples: expected a positive number, got {resamples}")
    import numpy as np

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[idx].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {
        "diff": round(float(diff.mean()), 4),
        "low": round(float(low), 4),
        "high": round(float(high), 4),
        "p_not_better": round(float((means <= 0).mean()), 4),
        "n": len(diff),
    }
