"""DPA-RAG reranker: the MGDA weights, the losses on hand-made numbers, the per-step
weighting on a toy model, and (slow) a training run on a tiny random BERT."""

import itertools
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ragtrain.retrieval.index import passage_text
from ragtrain.retrieval.reranker import (
    LOSSES,
    RERANKER_DEFAULTS,
    CrossEncoderReranker,
    batch_losses,
    check_settings,
    classification_metrics,
    mgda_weights,
    min_norm_weights,
    ranking_loss,
    supervised_contrastive_loss,
    train_reranker,
    weighted_backward,
)


def _vectors(*rows) -> list[torch.Tensor]:
    return [torch.tensor(row, dtype=torch.float64) for row in rows]


def _norm2(alpha: torch.Tensor, grads: list[torch.Tensor]) -> float:
    return float(sum(a * g for a, g in zip(alpha, grads, strict=True)).pow(2).sum())


def _two_point(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """The analytic min-norm point of the segment [g1, g2], as (gamma, 1 - gamma)."""
    gamma = float(((g2 - g1) @ g2) / (g1 - g2).pow(2).sum())
    gamma = min(max(gamma, 0.0), 1.0)
    return torch.tensor([gamma, 1 - gamma], dtype=torch.float64)


def _assert_on_simplex(alpha: torch.Tensor) -> None:
    assert alpha.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (alpha >= 0).all()


# --- the min-norm point -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("g1", "g2", "expected"),
    [
        ([1.0, 0.0], [0.0, 2.0], [0.8, 0.2]),  # inside the segment
        ([1.0, 0.0], [2.0, 1.0], [1.0, 0.0]),  # g1 itself is the min-norm point
        ([3.0, 1.0], [0.5, 0.0], [0.0, 1.0]),  # g2 itself is the min-norm point
        ([1.0, 0.0], [0.0, 1.0], [0.5, 0.5]),  # orthogonal, equal norms
        ([2.0, -1.0, 0.5], [-1.0, 1.5, 2.0], None),  # a generic pair
    ],
)
def test_two_gradients_give_the_analytic_min_norm_point(g1, g2, expected):
    grads = _vectors(g1, g2)
    alpha = mgda_weights(grads)
    _assert_on_simplex(alpha)
    assert torch.allclose(alpha, _two_point(*grads), atol=1e-9)
    if expected is not None:
        assert alpha.tolist() == pytest.approx(expected, abs=1e-9)


def test_min_norm_weights_takes_a_gram_matrix_of_any_scale():
    gram = torch.tensor([[1.0, 0.0], [0.0, 4.0]]) * 1e-6
    assert min_norm_weights(gram).tolist() == pytest.approx([0.8, 0.2], abs=1e-9)
    assert min_norm_weights(torch.tensor([[2.5]])).tolist() == [1.0]
    assert min_norm_weights(torch.zeros(3, 3)).tolist() == pytest.approx([1 / 3] * 3)


def _brute_check(alpha: torch.Tensor, grads: list[torch.Tensor]) -> None:
    """alpha's norm is no larger than any vertex's, any edge's min-norm point or any point
    of a fine grid over the simplex."""
    norm = _norm2(alpha, grads)
    for g in grads:
        assert norm <= g.pow(2).sum().item() + 1e-12
    for i, j in itertools.combinations(range(len(grads)), 2):
        edge = _two_point(grads[i], grads[j])
        assert norm <= _norm2(edge, [grads[i], grads[j]]) + 1e-12
    steps = 200
    grid = torch.tensor(
        [(a, b, steps - a - b) for a in range(steps + 1) for b in range(steps + 1 - a)],
        dtype=torch.float64,
    )
    points = (grid / steps) @ torch.stack(grads)
    assert norm <= points.pow(2).sum(1).min().item() + 1e-12


@pytest.mark.parametrize(
    ("grads", "expected"),
    [
        (_vectors([1, 0, 0], [0, 1, 0], [0, 0, 1]), [1 / 3, 1 / 3, 1 / 3]),
        # orthogonal with norms 1, 2, 3: alpha_i proportional to 1 / |g_i|^2
        (
            _vectors([1, 0, 0], [0, 2, 0], [0, 0, 3]),
            [w / (1 + 1 / 4 + 1 / 9) for w in (1, 1 / 4, 1 / 9)],
        ),
        # the min-norm point of edge g1-g2 is (0.8, 0.4, 0); g3 . (0.8, 0.4, 0) = 1.2 is above
        # its squared norm 0.8, so no move toward g3 helps: the optimum is on that edge.
        (_vectors([1, 0, 0], [0, 2, 0], [1, 1, 1]), [0.8, 0.2, 0.0]),
        # g3 is the shortest and every other gradient points further out from it: a vertex.
        (_vectors([3, 1, 0], [3, -1, 0], [1, 0, 0]), [0.0, 0.0, 1.0]),
    ],
    ids=["orthonormal", "orthogonal-norms", "edge", "vertex"],
)
def test_three_gradients_give_the_analytic_min_norm_point(grads, expected):
    alpha = mgda_weights(grads)
    _assert_on_simplex(alpha)
    assert alpha.tolist() == pytest.approx(expected, abs=1e-5)
    _brute_check(alpha, grads)


def test_min_norm_beats_the_simplex_grid_on_random_conflicting_gradients():
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = list(torch.randn(3, 6, generator=generator, dtype=torch.float64))
        grads[0] = grads[0] * 10  # unequal scales, as losses have
        alpha = mgda_weights(grads)
        _assert_on_simplex(alpha)
        _brute_check(alpha, grads)


# --- the losses -----------------------------------------------------------------------------


def _neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_ranking_loss_averages_every_ordered_pair_of_the_batch():
    scores = [torch.tensor([2.0, 1.0, 0.0]), torch.tensor([5.0]), torch.tensor([0.0, 3.0])]
    # pairs: (2,1), (2,0), (1,0) from the first record, none from the second, (0,3) from the third
    expected = (
        _neg_log_sigmoid(1) + _neg_log_sigmoid(2) + _neg_log_sigmoid(1) + _neg_log_sigmoid(-3)
    ) / 4
    assert ranking_loss(scores).item() == pytest.approx(expected, rel=1e-6)


def test_ranking_loss_is_none_without_a_pair():
    assert ranking_loss([torch.tensor([1.0]), torch.tensor([])]) is None
    assert ranking_loss([]) is None


def _supcon_by_hand(z: list[list[float]], labels: list[int], t: float) -> float:
    unit = [[x / math.hypot(*v) for x in v] for v in z]

    def sim(i, j):
        return sum(a * b for a, b in zip(unit[i], unit[j], strict=True)) / t

    per_anchor = []
    for i in range(len(unit)):
        others = [a for a in range(len(unit)) if a != i]
        partners = [p for p in others if labels[p] == labels[i]]
        if not partners:
            continue
        log_denominator = math.log(sum(math.exp(sim(i, a)) for a in others))
        per_anchor.append(-sum(sim(i, p) - log_denominator for p in partners) / len(partners))
    return sum(per_anchor) / len(per_anchor)


def test_supervised_contrastive_loss_matches_a_hand_computation():
    z = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.2]]
    labels = [1, 1, 0, 0]
    got = supervised_contrastive_loss(torch.tensor(z) * 3, torch.tensor(labels), 0.5)
    assert got.item() == pytest.approx(_supcon_by_hand(z, labels, 0.5), rel=1e-5)
    # at DPA-RAG's temperature too (large logits, still finite)
    got = supervised_contrastive_loss(torch.tensor(z), torch.tensor(labels), 0.07)
    assert got.item() == pytest.approx(_supcon_by_hand(z, labels, 0.07), rel=1e-5)


def test_supervised_contrastive_loss_skips_an_anchor_without_a_partner():
    z = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    labels = [1, 1, 0]  # the third has no partner: only the first two are anchors
    got = supervised_contrastive_loss(torch.tensor(z), torch.tensor(labels), 0.5)
    assert got.item() == pytest.approx(_supcon_by_hand(z, labels, 0.5), rel=1e-5)
    sims = [0.6 / 0.5, 0.0, 0.8 / 0.5]  # z1.z2, z1.z3, z2.z3 over t
    anchor1 = -(sims[0] - math.log(math.exp(sims[0]) + math.exp(sims[1])))
    anchor2 = -(sims[0] - math.log(math.exp(sims[0]) + math.exp(sims[2])))
    assert got.item() == pytest.approx((anchor1 + anchor2) / 2, rel=1e-5)
    assert torch.isfinite(got)


def test_supervised_contrastive_loss_is_none_when_no_anchor_has_a_partner():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert supervised_contrastive_loss(z, torch.tensor([1, 0]), 0.07) is None


# --- settings -------------------------------------------------------------------------------


def test_defaults_enable_every_loss_with_mgda():
    s = check_settings({})
    assert s["losses"] == list(LOSSES) and s["weighting"] == "mgda"
    assert RERANKER_DEFAULTS["weights"] is None
    assert s["weights"] == dict.fromkeys(LOSSES, 1.0)


def test_fixed_weights_not_named_default_to_one():
    s = check_settings({"weighting": "fixed", "weights": {"ranking": 3}})
    assert s["weights"] == {"classification": 1.0, "ranking": 3.0, "contrastive": 1.0}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"losses": ["classification", "listwise"]}, "unknown loss 'listwise'"),
        ({"losses": []}, "losses must be a non-empty list"),
        ({"weighting": "pcgrad"}, "weighting must be one of mgda, fixed"),
        (
            {"losses": ["ranking"], "weighting": "fixed", "weights": {"contrastive": 1}},
            "weights name loss 'contrastive', which is not enabled",
        ),
        ({"weights": {"ranking": 1}}, "weights apply to weighting 'fixed'"),
        ({"weighting": "fixed", "weights": {"ranking": -1}}, "weights.ranking must be"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(settings, message):
    with pytest.raises(ValueError, match=message):
        check_settings(settings)


# --- one step on a toy model ---------------------------------------------------------------


class ToyReranker(nn.Module):
    """A CrossEncoderReranker stand-in: hand-made pair features through a linear encoder."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def embeddings(self, queries, docs, max_length):
        rows = []
        for q, d in zip(queries, docs, strict=True):
            text = passage_text(d)
            shared = len(set(q.split()) & set(text.split()))
            rows.append([len(text) / 10, float(shared), float("yes" in text)])
        return self.encoder(torch.tensor(rows))

    def logits(self, queries, docs, max_length):
        return self.head(self.embeddings(queries, docs, max_length))


def _doc(text: str) -> dict:
    return {"title": "", "text": text}


def _record(rid: str, rank: int = 3, pos: int = 2, neg: int = 2, relevant=True) -> dict:
    return {
        "id": rid,
        "query": f"what is {rid}",
        "positive": [_doc(f"yes {rid} {i}") for i in range(pos)],
        "negative": [_doc(f"no {i}") for i in range(neg)],
        "classification": {
            "doc": _doc(f"yes {rid}"),
            "label": 1 if relevant else 2,
            "relevant": relevant,
        },
        "rank_list": [_doc(f"{rid} doc {i}") for i in range(rank)],
    }


def test_batch_losses_leave_out_what_a_batch_has_no_data_for():
    model, s = ToyReranker(), check_settings({})
    got = batch_losses(
        model, [_record("a", rank=1, pos=1, neg=1), _record("b", rank=0, pos=1, neg=0)], s
    )
    assert set(got) == {"classification"}  # one positive, one negative: no anchor pairs
    got = batch_losses(model, [_record("a", rank=2, pos=0, neg=2)], s)
    assert set(got) == set(LOSSES)  # the two negatives are each other's partners
    only = check_settings({"losses": ["ranking"]})
    assert set(batch_losses(model, [_record("a")], only)) == {"ranking"}


def test_batch_losses_match_the_losses_computed_one_by_one():
    model, s = ToyReranker(), check_settings({"contrastive_per_side": 2})
    batch = [_record("a", pos=3), _record("b", relevant=False), _record("c", pos=1, neg=1)]
    got = batch_losses(model, batch, s)
    logits = model.logits(
        [r["query"] for r in batch], [r["classification"]["doc"] for r in batch], 64
    )
    expected = F.cross_entropy(logits, torch.tensor([1, 0, 1]))
    assert got["classification"].item() == pytest.approx(expected.item(), rel=1e-6)
    scores = [model.logits([r["query"]] * 3, r["rank_list"], 64)[:, 1] for r in batch]
    assert got["ranking"].item() == pytest.approx(ranking_loss(scores).item(), rel=1e-6)
    # "c" has one positive and one negative: no anchor has a partner, so only a and b count,
    # each with its first 2 positives and 2 negatives.
    per_record = [
        supervised_contrastive_loss(
            model.embeddings([r["query"]] * 4, r["positive"][:2] + r["negative"][:2], 64),
            torch.tensor([1, 1, 0, 0]),
            0.07,
        )
        for r in batch[:2]
    ]
    expected = (per_record[0] + per_record[1]) / 2
    assert got["contrastive"].item() == pytest.approx(expected.item(), rel=1e-5)


def _grads(model, loss) -> list[torch.Tensor]:
    """d loss / d parameter, zeros where a parameter is unused (the contrastive loss
    never reaches the head)."""
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def test_fixed_weights_are_renormalised_over_the_losses_a_step_has():
    model = ToyReranker()
    s = check_settings({"weighting": "fixed", "weights": {"classification": 2, "ranking": 1}})
    losses = batch_losses(model, [_record("a", pos=0, neg=0)], s)
    assert set(losses) == {"classification", "ranking"}
    expected = _grads(model, 2 / 3 * losses["classification"] + 1 / 3 * losses["ranking"])
    weights = weighted_backward(model, losses, s)
    assert weights == pytest.approx({"classification": 2 / 3, "ranking": 1 / 3})
    for p, g in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-7)


def test_mgda_step_sets_the_gradient_of_the_alpha_weighted_sum():
    model, s = ToyReranker(), check_settings({})
    losses = batch_losses(model, [_record("a"), _record("b", relevant=False)], s)
    assert set(losses) == set(LOSSES)
    per_loss = {name: _grads(model, loss) for name, loss in losses.items()}
    shared = len(list(model.encoder.parameters()))  # the head's gradients are not compared
    alpha = mgda_weights(
        [torch.cat([g.reshape(-1) for g in grads[:shared]]) for grads in per_loss.values()]
    )
    weights = weighted_backward(model, losses, s)
    assert list(weights.values()) == pytest.approx(alpha.tolist(), abs=1e-9)
    assert sum(weights.values()) == pytest.approx(1.0)
    for k, p in enumerate(model.parameters()):
        expected = sum(weights[name] * grads[k] for name, grads in per_loss.items())
        assert torch.allclose(p.grad, expected, atol=1e-7)


def test_fixed_weight_zero_is_kept_when_its_loss_is_alone():
    model = ToyReranker()
    s = check_settings({"weighting": "fixed", "weights": {"classification": 0, "ranking": 1}})
    losses = batch_losses(model, [_record("a", rank=0, pos=0, neg=0)], s)
    assert weighted_backward(model, losses, s) == {"classification": 0.0}
    assert all(not p.grad.any() for p in model.parameters())


def test_one_loss_gets_weight_one():
    model, s = ToyReranker(), check_settings({})
    losses = batch_losses(model, [_record("a", rank=0, pos=0, neg=0)], s)
    assert weighted_backward(model, losses, s) == {"classification": 1.0}


class FixedLogits(nn.Module):
    """Predicts aligned exactly for documents containing "yes"."""

    def logits(self, queries, docs, max_length):
        return torch.tensor([[0.0, 1.0] if "yes" in d["text"] else [1.0, 0.0] for d in docs])


def test_classification_metrics_score_the_aligned_class():
    records = [_record("a"), _record("b"), _record("c", relevant=False)]
    records[1]["classification"]["doc"] = _doc("no")  # aligned, predicted not: a miss
    records[2]["classification"]["doc"] = _doc("yes")  # not aligned, predicted: a false alarm
    got = classification_metrics(FixedLogits(), records)
    assert got == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "accuracy": round(1 / 3, 4),
        "n": 3,
        "n_aligned": 2,
        "n_predicted_aligned": 2,
    }


# --- training a tiny encoder --------------------------------------------------------------

WORDS = [
    "apple", "river", "castle", "engine", "forest", "guitar",
    "harbor", "island", "jungle", "kettle", "lemon", "mirror",
]  # fmt: skip


def _aligned(word: str) -> dict:
    return {"title": word.title(), "text": f"the answer about {word} is here"}


def _unaligned(word: str) -> dict:
    return {"title": word.title(), "text": f"a story about {word} is here"}


def _synthetic(i: int) -> dict:
    """Aligned documents share "answer" with the query; the others do not."""
    word, relevant = WORDS[i % len(WORDS)], i % 2 == 0
    return {
        "id": f"r{i}",
        "query": f"what is the answer about {word}?",
        "positive": [_aligned(word), _aligned(WORDS[(i + 1) % 12])],
        "negative": [_unaligned(word), _unaligned(WORDS[(i + 2) % 12])],
        "classification": {
            "doc": _aligned(word) if relevant else _unaligned(word),
            "label": 1 if relevant else 2,
            "relevant": relevant,
        },
        "rank_list": [_aligned(word), _unaligned(word), _unaligned(WORDS[(i + 3) % 12])],
    }


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    """A random 2-layer BERT (hidden 32, no dropout) with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ragtrain.retrieval.index import resolve_encoder

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("all-MiniLM-L6-v2"))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_mgda_training_learns_and_logs_its_weights(tiny_encoder, tmp_path):
    records = [_synthetic(i) for i in range(32)]
    train, dev = records[:24], records[24:]
    settings = {
        "encoder": tiny_encoder,
        "epochs": 4,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "warmup_ratio": 0.0,
        "max_length": 32,
    }
    metrics = train_reranker(train, dev, settings, tmp_path / "mgda", threads=1)

    history = _read_jsonl(tmp_path / "mgda" / "weights.jsonl")
    assert metrics["steps"] == len(history) == 4 * 6
    assert [h["step"] for h in history] == list(range(1, 25))
    for h in history:
        assert set(h["weights"]) == set(h["losses"]) == set(LOSSES)
        assert sum(h["weights"].values()) == pytest.approx(1.0, abs=1e-5)
        assert min(h["weights"].values()) >= 0
    assert (tmp_path / "mgda" / "weights.png").stat().st_size > 0
    assert metrics["kind"] == "reranker" and metrics["weighting"] == "mgda"
    assert metrics["losses"] == list(LOSSES)
    assert (metrics["train_records"], metrics["dev_records"]) == (24, 8)
    assert sum(metrics["mean_weights"].values()) == pytest.approx(1.0, abs=1e-3)
    assert metrics["dev_before"]["n"] == metrics["dev"]["n"] == 8

    # Every loss falls from the first epoch to the last, and dev accuracy rises (measured:
    # classification 0.71 -> 0.05, ranking 0.66 -> 0.23, contrastive 1.05 -> 0.00;
    # dev accuracy 0.5 -> 1.0).
    for name in LOSSES:
        first, last = (
            statistics.mean(h["losses"][name] for h in history if h["epoch"] == epoch)
            for epoch in (1, 4)
        )
        assert last < 0.8 * first, name
    assert metrics["dev"]["accuracy"] > metrics["dev_before"]["accuracy"]
    assert metrics["dev"]["f1"] > metrics["dev_before"]["f1"]

    # What was saved is what was evaluated, and saving again changes no score.
    loaded = CrossEncoderReranker.load(tmp_path / "mgda")
    assert classification_metrics(loaded, dev, 32) == metrics["dev"]
    loaded.save(tmp_path / "again")
    again = CrossEncoderReranker.load(tmp_path / "again")
    docs = records[0]["rank_list"] + records[1]["negative"]
    assert again.scores(records[0]["query"], docs, 32) == loaded.scores(
        records[0]["query"], docs, 32
    )
    # a trained reranker ranks the aligned document of a dev query first
    scores = loaded.scores(dev[0]["query"], dev[0]["rank_list"], 32)
    assert scores[0] == max(scores)


@pytest.mark.slow
def test_fixed_weighting_logs_the_fixed_weights(tiny_encoder, tmp_path):
    train = [_synthetic(i) for i in range(8)]
    train[0]["rank_list"] = train[0]["rank_list"][:1]  # no pair: no ranking term
    settings = {
        "encoder": tiny_encoder,
        "epochs": 1,
        "batch_size": 4,
        "max_length": 32,
        "weighting": "fixed",
        "weights": {"classification": 2.0, "ranking": 1.0, "contrastive": 1.0},
    }
    metrics = train_reranker(train, train[:2], settings, tmp_path / "fixed", threads=1)
    history = _read_jsonl(tmp_path / "fixed" / "weights.jsonl")
    assert len(history) == metrics["steps"] == 2
    for h in history:
        assert h["weights"] == {"classification": 0.5, "ranking": 0.25, "contrastive": 0.25}
    assert metrics["mean_weights"] == {"classification": 0.5, "ranking": 0.25, "contrastive": 0.25}


@pytest.mark.slow
def test_a_fresh_reranker_round_trips_through_save_and_load(tiny_encoder, tmp_path):
    model = CrossEncoderReranker.from_encoder(tiny_encoder, seed=3)
    same_seed = CrossEncoderReranker.from_encoder(tiny_encoder, seed=3)
    assert torch.equal(model.head.weight, same_seed.head.weight)
    model.save(tmp_path / "fresh")
    meta = json.loads((tmp_path / "fresh" / "reranker.json").read_text())
    assert meta["trust_remote_code"] is False
    loaded = CrossEncoderReranker.load(tmp_path / "fresh")
    record = _synthetic(0)
    docs = record["rank_list"]
    assert loaded.scores(record["query"], docs, 32) == model.scores(record["query"], docs, 32)
    assert loaded.logits([record["query"]], docs[:1], 32).shape == (1, 2)
    assert loaded.embeddings([record["query"]] * 2, docs[:2], 32).shape == (2, 32)
