import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from ragtrain.retrieval import lossnet
from ragtrain.retrieval.index import load_encoder, passage_text, resolve_encoder
from ragtrain.retrieval.lossnet import (
    LOSSNET_DEFAULTS,
    check_params,
    cosine_gaps,
    hard_negatives,
    lossnet_filter,
    predict,
    seed_net,
    train_lossnet,
    true_losses,
)

CORPUS = [
    {"id": "p1", "title": "Marel Dovant", "text": "Marel Dovant was born in Kesh in 1962."},
    {"id": "p2", "title": "Orvane Systems", "text": "Orvane Systems builds ferries in Ostrivale."},
    {"id": "p3", "title": "Kesh", "text": "Kesh is a river town in Valdoria."},
    {"id": "p4", "title": "Tollan Brisk", "text": "Tollan Brisk is a glassblower."},
    {"id": "p5", "title": "Ostrivale", "text": "Ostrivale is a harbour city with a ferry port."},
    {"id": "p6", "title": "Valdoria", "text": "Valdoria is a small country of rivers."},
]
QUERIES = [
    ("p1", "Where was Marel Dovant born?"),
    ("p1", "When was Marel Dovant born?"),
    ("p1", "what is glass made of"),
    ("p2", "What does Orvane Systems build?"),
    ("p2", "ferries in Ostrivale"),
    ("p2", "which river flows through Kesh"),
    ("p3", "Which town lies on a river in Valdoria?"),
    ("p3", "Kesh river town"),
    ("p4", "Who is Tollan Brisk?"),
    ("p4", "harbour city ferry port"),
    ("p5", "Where is the ferry port?"),
    ("p6", "a small country of rivers"),
]
RECORDS = [
    {"id": f"q{i}", "doc_id": doc, "query": q, "filters": {"bm25_rank": 1}}
    for i, (doc, q) in enumerate(QUERIES)
]
# Two records already dropped by an earlier filter: they must come back as they were.
RECORDS[2]["kept"] = False
RECORDS[9]["kept"] = False
FAST = {"epochs": 30, "hidden": 32, "labelled_fraction": 1.0, "holdout_fraction": 0.25}


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    # A smooth nonlinear target with a positive range, like a contrastive loss.
    y = np.log1p(np.exp(2 * x[:, 0] - x[:, 1])) + 0.5 * np.sin(x[:, 2]) + 0.3 * x[:, 3] ** 2
    return x, y


@pytest.mark.parametrize("objective", ["mse", "margin"])
def test_lossnet_learns_a_smooth_toy_signal(objective):
    x, y = _toy(400, 0)
    params = {"objective": objective, "epochs": 60, "hidden": 64, "learning_rate": 3e-3}
    model, history = train_lossnet(x[:300], y[:300], params)
    assert len(history) == 60
    assert history[-1] < 0.5 * history[0]
    rho = spearmanr(predict(model, x[300:]), y[300:]).statistic
    assert rho > 0.85
    # Seeded: the same data and params give the same model.
    model2, history2 = train_lossnet(x[:300], y[:300], params)
    assert history2 == history
    np.testing.assert_array_equal(predict(model2, x[300:]), predict(model, x[300:]))


def test_mse_predictions_are_in_loss_units():
    x, y = _toy(300, 1)
    model, _ = train_lossnet(x, y + 10.0, {"epochs": 60, "hidden": 64, "learning_rate": 3e-3})
    assert abs(predict(model, x).mean() - (y.mean() + 10.0)) < 0.5


def test_hard_negative_is_the_best_bm25_passage_other_than_the_source():
    queries = ["Marel Dovant born in Kesh", "Marel Dovant born in Kesh", "glassblower"]
    negatives = hard_negatives(queries, ["p1", "p3", "p4"], CORPUS, depth=10, seed=0)
    assert negatives[:2] == ["p3", "p1"]
    assert negatives[2] != "p4"
    # Depth 1 with the source on top: a random other passage stands in, never the source.
    assert hard_negatives(["Tollan Brisk"], ["p4"], CORPUS, depth=1, seed=0)[0] != "p4"


@pytest.mark.slow
def test_true_loss_is_lower_for_a_query_naming_its_document():
    model = load_encoder({**LOSSNET_DEFAULTS})
    doc = passage_text(CORPUS[0])
    neg = passage_text(CORPUS[3])
    losses = true_losses(
        model,
        ["Where was Marel Dovant born?", "Who blows glass for a living?"],
        [doc, doc],
        [neg, neg],
        LOSSNET_DEFAULTS,
    )
    assert losses[0] < 0.1 < losses[1]
    # The definition: -log softmax(20 * [cos+, cos-])[0], from the encoder's own vectors.
    v = model.encode(["Where was Marel Dovant born?", doc, neg], normalize_embeddings=True)
    logits = 20.0 * np.array([v[0] @ v[1], v[0] @ v[2]], dtype=np.float64)
    expected = -(logits[0] - np.logaddexp(logits[0], logits[1]))
    assert losses[0] == pytest.approx(expected, rel=1e-3, abs=1e-6)


@pytest.fixture(scope="module")
def filtered():
    params = {**FAST, "top_fraction": 0.5, "seed": 7}
    return lossnet_filter(RECORDS, CORPUS, "all-MiniLM-L6-v2", params)


@pytest.mark.slow
def test_filter_keeps_exactly_the_top_fraction_by_prediction(filtered):
    out, stats = filtered
    assert [r["id"] for r in out] == [r["id"] for r in RECORDS]
    # Dropped records pass through unchanged; the input is not modified.
    assert out[2] == RECORDS[2] and out[9] == RECORDS[9]
    assert "lossnet" not in RECORDS[0]["filters"]
    cands = [r for r in out if r["id"] not in ("q2", "q9")]
    kept = [r["filters"]["lossnet"] for r in cands if r["kept"]]
    dropped = [r["filters"]["lossnet"] for r in cands if not r["kept"]]
    assert len(kept) == math.ceil(0.5 * 10) == stats["n_kept"]
    assert min(kept) >= max(dropped)
    assert all(r["filters"]["bm25_rank"] == 1 for r in cands)  # earlier filters kept
    assert stats["n_records"] == 12 and stats["n_candidates"] == 10
    assert stats["n_labelled"] == 10 and stats["n_holdout"] == round(0.25 * 10)
    assert stats["train_loss_last"] < stats["train_loss_first"]
    assert stats["spearman_holdout"] is None or -1 <= stats["spearman_holdout"] <= 1


@pytest.mark.slow
def test_threshold_mode_keeps_predictions_at_or_above_it(filtered):
    first, _ = filtered
    preds = sorted(r["filters"]["lossnet"] for r in first if "lossnet" in r["filters"])
    threshold = preds[6]  # between the 6th and 7th smallest: 4 of 10 at or above it
    params = {**FAST, "keep": "threshold", "threshold": threshold, "seed": 7}
    out, stats = lossnet_filter(RECORDS, CORPUS, "all-MiniLM-L6-v2", params)
    # Same seed, same predictions as the top_fraction run.
    assert [r["filters"].get("lossnet") for r in out] == [
        r["filters"].get("lossnet") for r in first
    ]
    for r in out:
        if r["id"] in ("q2", "q9"):
            assert r["kept"] is False
        else:
            assert r["kept"] == (r["filters"]["lossnet"] >= threshold)
    assert stats["n_kept"] == 4


@pytest.mark.slow
def test_gold_pairs_add_labelled_examples_only():
    gold = [{"id": "g1", "doc_id": "p6", "query": "Which country has many rivers?"}]
    params = {**FAST, "epochs": 5, "holdout_fraction": 0.0}
    out, stats = lossnet_filter(RECORDS, CORPUS, "all-MiniLM-L6-v2", params, gold=gold)
    assert stats["n_labelled"] == 11 and stats["n_holdout"] == 0
    assert stats["spearman_holdout"] is None
    assert [r["id"] for r in out] == [r["id"] for r in RECORDS]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"keep": "best"}, r"keep must be one of \('top_fraction', 'threshold'\)"),
        ({"objective": "hinge"}, r"objective must be one of \('mse', 'margin'\)"),
        ({"keep": "threshold"}, "needs a numeric threshold"),
        ({"top_fraction": 0}, "top_fraction must be in"),
        ({"labelled_fraction": 1.5}, "labelled_fraction must be in"),
        ({"holdout_fraction": 1}, "holdout_fraction must be in"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"variant": "paper"}, r"variant must be one of \('ours', 'seed'\)"),
        ({"variant": "seed", "objective": "margin"}, "objective must be 'mse' with variant"),
    ],
)
def test_bad_params_raise_naming_the_key(change, message):
    with pytest.raises(ValueError, match=message):
        check_params(change)
    # The filter checks before loading any model.
    with pytest.raises(ValueError, match=message):
        lossnet_filter(RECORDS, CORPUS, "no-such-model", change)


def test_unknown_doc_id_is_reported():
    bad = [*RECORDS, {"id": "qx", "doc_id": "p99", "query": "?"}]
    with pytest.raises(ValueError, match="'qx' names doc_id 'p99'"):
        lossnet_filter(bad, CORPUS, "no-such-model", FAST)


def test_no_candidates_passes_everything_through():
    dropped = [{**r, "kept": False} for r in RECORDS]
    out, stats = lossnet_filter(dropped, CORPUS, "no-such-model", FAST)
    assert out == dropped
    assert stats["n_candidates"] == 0 and stats["n_kept"] == 0


@pytest.mark.slow
def test_separate_feature_encoder_gives_the_same_result_as_a_shared_one(tmp_path, filtered):
    # The same weights under another folder: the filter loads it as a second model instead
    # of reusing the retriever's vectors, and must reach the same predictions.
    source = Path(resolve_encoder("all-MiniLM-L6-v2"))
    other = tmp_path / "encoder"
    other.mkdir()
    for entry in source.iterdir():
        (other / entry.name).symlink_to(entry)
    params = {**FAST, "top_fraction": 0.5, "seed": 7, "encoder": str(other)}
    out, _ = lossnet_filter(RECORDS, CORPUS, "all-MiniLM-L6-v2", params)
    first, _ = filtered
    ours = [r["filters"].get("lossnet") for r in out]
    assert ours == pytest.approx([r["filters"].get("lossnet") for r in first], abs=1e-3)


def test_seed_lossnet_has_the_seeds_shape():
    import torch

    net = seed_net(384, 256)
    shapes = {name: tuple(t.shape) for name, t in net.named_parameters()}
    for part in ("query", "positive", "negative"):
        assert shapes[f"{part}.weight"] == (256, 384) and shapes[f"{part}.bias"] == (256,)
    assert shapes["head.0.weight"] == (1, 768) and len(shapes) == 8
    out = net(torch.randn(5, 3 * 384))
    assert out.shape == (5, 1) and bool((out >= 0).all())  # the ReLU'd scalar


def test_seed_target_is_the_clipped_cosine_gap():
    q = np.array([[1.0, 0.0], [1.0, 0.0]])
    pos = np.array([[0.6, 0.8], [0.8, 0.6]])
    neg = np.array([[0.8, 0.6], [0.6, 0.8]])
    np.testing.assert_allclose(cosine_gaps(q, pos, neg), [0.2, 0.0])


def test_seed_lossnet_fits_a_target_it_can_represent():
    # The seed's net is linear in [q, d+, d-] up to its ReLU: a clipped linear target.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3 * 8)).astype(np.float32)
    y = np.maximum(0.0, x @ rng.normal(size=24) * 0.3 + 0.5)
    params = {"variant": "seed", "epochs": 80, "hidden": 16, "learning_rate": 3e-3}
    model, history = train_lossnet(x[:400], y[:400], params)
    assert history[-1] < 0.2 * history[0]
    pred = predict(model, x[400:])
    # Raw target units (no standardising under a ReLU), and close to the target.
    assert pred.min() >= 0
    assert np.mean((pred - y[400:]) ** 2) < 0.1 * y[400:].var()
    with pytest.raises(ValueError, match=r"seed features are \[q, d\+, d-\]"):
        train_lossnet(x[:, :10], y, params)


def _bag_of_words(model, texts, params):
    """A stand-in encoder: hashed word counts, unit length (no model to load)."""
    out = np.full((len(texts), 16), 1e-3, dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().replace("?", " ").split():
            out[i, sum(map(ord, word)) % 16] += 1
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_seed_variant_filter_trains_on_cosine_gaps_of_the_retriever(monkeypatch):
    monkeypatch.setattr(lossnet, "_load", lambda name, params: None)
    monkeypatch.setattr(lossnet, "encode", _bag_of_words)
    params = {**FAST, "variant": "seed", "holdout_fraction": 0.0, "seed": 7}
    out, stats = lossnet_filter(RECORDS, CORPUS, "all-MiniLM-L6-v2", params)
    cands = [r for r in RECORDS if r.get("kept", True)]
    texts = {d["id"]: passage_text(d) for d in CORPUS}
    negs = hard_negatives([r["query"] for r in cands], [r["doc_id"] for r in cands], CORPUS, 10, 7)
    q = _bag_of_words(None, [r["query"] for r in cands], {})
    pos = _bag_of_words(None, [texts[r["doc_id"]] for r in cands], {})
    neg = _bag_of_words(None, [texts[n] for n in negs], {})
    assert stats["variant"] == "seed" and stats["n_labelled"] == 10
    assert stats["true_loss_mean"] == round(float(cosine_gaps(q, pos, neg).mean()), 4)
    predicted = [r["filters"]["lossnet"] for r in out if "lossnet" in r["filters"]]
    assert len(predicted) == 10 and min(predicted) >= 0
    assert sum(r["kept"] for r in out) == stats["n_kept"] == 5
