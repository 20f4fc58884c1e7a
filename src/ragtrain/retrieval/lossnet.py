"""LossNet filter for pseudo-queries: keep the pairs the retriever would learn most from.

SPTAR-style augmentation writes many pseudo-queries, and most of them are easy: the current
retriever already ranks their source document first, so training on them teaches little.
Active learning's "learning loss" idea (Yoo & Kweon 2019) predicts, for each example, the
loss the model would incur on it, and keeps the examples with the highest predicted loss.

Computing the true loss needs the retriever to encode every pair; a LossNet learns to
predict it from cheap, frozen embeddings instead, so it can score a large pool from a small
labelled sample, and its held-out Spearman correlation says whether the prediction can be
trusted. Steps:

1. hard negative per (query, source document): the best BM25 document that is not the
   source, among the top `negatives_depth`;
2. true loss on a seeded `labelled_fraction` of the candidates (plus gold pairs, if given):
   the retriever's MultipleNegativesRankingLoss on (query, source, hard negative), i.e.
   `-log softmax(scale * [cos(q, d+), cos(q, d-)])[0]`;
3. a small MLP over frozen `encoder` embeddings [q, d+, d-, q*d+, q*d-] learns the loss,
   by regression ("mse") or by ranking random pairs ("margin", as in Yoo & Kweon);
4. every candidate gets `filters.lossnet` (the prediction) and `kept`.

With "mse" the prediction is in loss units; with "margin" it is a ranking score whose order
alone means something, so a `threshold` then applies to that score.

`variant: seed` is LossNet as SPTAR describes it instead of ours (the default): the target is
`max(0, cos(q, d-) - cos(q, d+))` under the retriever, and the net projects q, d+ and d-
each with its own linear layer to `hidden` (256) units, concatenates the three, and maps
them to a scalar with a linear layer and a ReLU, trained by MSE on the raw targets. Note the
whole net is linear in the three embeddings up to that last ReLU: it cannot form the
query-document products a cosine gap is made of, which is why ours feeds q*d+ and q*d-.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ragtrain.core.seeds import DEFAULT_SEED, stable_seed
from ragtrain.data.passages import Passages, passages_with_ids, rows_of, skipping
from ragtrain.retrieval.index import bm25_top, encode, load_encoder, passage_text, resolve_encoder

LOSSNET_DEFAULTS: dict[str, Any] = {
    # `ours` (features with products, contrastive-loss target) or `seed` (SPTAR's)
    "variant": "ours",
    "encoder": "all-MiniLM-L6-v2",
    "objective": "mse",
    "hidden": 256,
    "epochs": 200,
    "learning_rate": 1e-3,
    "labelled_fraction": 0.5,
    "holdout_fraction": 0.2,
    "negatives_depth": 10,
    "scale": 20.0,
    "keep": "top_fraction",
    "top_fraction": 0.5,
    "threshold": None,
    "batch_size": 64,
    # The retriever's instruction prefixes (e5: "query: ", "passage: "); the feature
    # encoder gets them only when it is the retriever itself.
    "query_prefix": "",
    "passage_prefix": "",
    # run the encoder's own code (a hub model with custom code): only when turned on
    "trust_remote_code": False,
}
VARIANTS = ("ours", "seed")
OBJECTIVES = ("mse", "margin")
KEEP_MODES = ("top_fraction", "threshold")
# MarginRankingLoss margin on predicted-loss differences, as in Yoo & Kweon (2019).
RANKING_MARGIN = 1.0


def check_params(params: dict) -> dict:
    """Defaults filled in; a ValueError naming the key for a bad value."""
    p = {**LOSSNET_DEFAULTS, **params}
    if p["variant"] not in VARIANTS:
        raise ValueError(f"lossnet: variant must be one of {VARIANTS}, got {p['variant']!r}")
    if p["variant"] == "seed" and p["objective"] != "mse":
        raise ValueError(
            f"lossnet: objective must be 'mse' with variant 'seed', got {p['objective']!r}"
        )
    if p["objective"] not in OBJECTIVES:
        raise ValueError(f"lossnet: objective must be one of {OBJECTIVES}, got {p['objective']!r}")
    if p["keep"] not in KEEP_MODES:
        raise ValueError(f"lossnet: keep must be one of {KEEP_MODES}, got {p['keep']!r}")
    if p["keep"] == "threshold" and not _is_number(p["threshold"]):
        raise ValueError(
            f"lossnet: keep 'threshold' needs a numeric threshold, got {p['threshold']!r}"
        )
    for key in ("labelled_fraction", "top_fraction"):
        if not _is_number(p[key]) or not 0 < p[key] <= 1:
            raise ValueError(f"lossnet: {key} must be in (0, 1], got {p[key]!r}")
    if not _is_number(p["holdout_fraction"]) or not 0 <= p["holdout_fraction"] < 1:
        raise ValueError(
            f"lossnet: holdout_fraction must be in [0, 1), got {p['holdout_fraction']!r}"
        )
    for key in ("hidden", "epochs", "negatives_depth", "batch_size"):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
            raise ValueError(f"lossnet: {key} must be a positive integer, got {p[key]!r}")
    for key in ("learning_rate", "scale"):
        if not _is_number(p[key]) or p[key] <= 0:
            raise ValueError(f"lossnet: {key} must be a positive number, got {p[key]!r}")
    return p


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def hard_negatives(
    queries: list[str], sources: list[str], corpus: list[dict] | Passages, depth: int, seed: int
) -> list[str]:
    """Per query, the id of the best BM25 passage among the top `depth` that is not its source.

    Tokenised like ragtrain.retrieval.index (bm25s, English stopwords). When the top `depth` holds
    only the source (depth 1), a seeded random other passage stands in. Stored Passages are
    read by row (the hits and stand-ins only; BM25 over them is built in chunks, bm25_top).
    """
    n = len(corpus)
    if n < 2:
        raise ValueError("lossnet: the corpus needs at least 2 passages to draw a negative from")
    if not queries:
        return []
    hits = bm25_top(corpus, queries, depth)
    rng = np.random.default_rng(stable_seed(seed, "lossnet-negatives"))
    source_rows = rows_of(corpus, sources)
    out = []
    for row, source in zip(hits, sources, strict=True):
        negative = next((d for d in (corpus[i]["id"] for i, _ in row) if d != source), None)
        if negative is None:
            # A draw from the list of the other passages' ids, without the list.
            skipped = np.array([source_rows[source]] if source in source_rows else [], np.int64)
            negative = corpus[skipping(int(rng.integers(n - len(skipped))), skipped)]["id"]
        out.append(negative)
    return out


def true_losses(
    model,
    queries: list[str],
    positives: list[str],
    negatives: list[str],
    params: dict,
) -> np.ndarray:
    """The retriever's contrastive loss per (query, positive text, negative text).

    `-log softmax(scale * [cos(q, d+), cos(q, d-)])[0]`, computed as
    `softplus(scale * (cos(q, d-) - cos(q, d+)))` to stay finite for large gaps.
    """
    p = {**LOSSNET_DEFAULTS, **params}
    if not queries:
        return np.zeros(0, dtype=np.float64)
    q = encode(model, [p["query_prefix"] + t for t in queries], p)
    # Each distinct passage is encoded once: many queries share a source or a negative.
    texts = sorted(set(positives) | set(negatives))
    docs = encode(model, [p["passage_prefix"] + t for t in texts], p)
    where = {t: i for i, t in enumerate(texts)}
    pos = docs[[where[t] for t in positives]]
    neg = docs[[where[t] for t in negatives]]
    return contrastive_losses(q, pos, neg, p["scale"])


def contrastive_losses(q: np.ndarray, pos: np.ndarray, neg: np.ndarray, scale: float) -> np.ndarray:
    """Per row of unit vectors, `-log softmax(scale * [q.pos, q.neg])[0]`."""
    gap = scale * ((q * neg).sum(1).astype(np.float64) - (q * pos).sum(1))
    return np.logaddexp(0.0, gap)


def cosine_gaps(q: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """SPTAR's LossNet target per row of unit vectors: `max(0, q.neg - q.pos)`."""
    gap = (q * neg).sum(1).astype(np.float64) - (q * pos).sum(1)
    return np.maximum(gap, 0.0)


def features(q: np.ndarray, pos: np.ndarray, neg: np.ndarray, variant: str = "ours") -> np.ndarray:
    """LossNet input: the three embeddings and the two query-document products (ours), or
    the three embeddings alone (the seed's)."""
    parts = [q, pos, neg] if variant == "seed" else [q, pos, neg, q * pos, q * neg]
    return np.concatenate(parts, axis=1).astype(np.float32)


def seed_net(dim: int, width: int):
    """SPTAR's LossNet over [q, d+, d-] rows of 3 x `dim`: a linear projection of each to
    `width`, concatenated, then a linear layer and a ReLU to a scalar."""
    import torch

    class SeedLossNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.query = torch.nn.Linear(dim, width)
            self.positive = torch.nn.Linear(dim, width)
            self.negative = torch.nn.Linear(dim, width)
            self.head = torch.nn.Sequential(torch.nn.Linear(3 * width, 1), torch.nn.ReLU())

        def forward(self, x):
            q, pos, neg = x.split(dim, dim=1)
            parts = [self.query(q), self.positive(pos), self.negative(neg)]
            return self.head(torch.cat(parts, dim=1))

    return SeedLossNet()


class LossNet:
    """The MLP plus the target scaling it was trained with (predictions in loss units)."""

    def __init__(self, net, mean: float, std: float):
        self.net, self.mean, self.std = net, mean, std


def train_lossnet(
    feats: np.ndarray, targets: np.ndarray, params: dict
) -> tuple[LossNet, list[float]]:
    """Train the MLP on (features, true losses); return it and the mean loss of each epoch."""
    import torch

    p = check_params(params)
    feats = np.asarray(feats, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.float64)
    if feats.ndim != 2 or len(feats) != len(targets) or len(feats) < 2:
        raise ValueError(
            f"lossnet: need at least 2 training examples with one target each, "
            f"got features {feats.shape} and {targets.shape[0]} targets"
        )
    seed = stable_seed(p.get("seed", DEFAULT_SEED), "lossnet-train")
    if p["variant"] == "seed":
        if feats.shape[1] % 3:
            raise ValueError(f"lossnet: seed features are [q, d+, d-], got width {feats.shape[1]}")
        # The seed's ReLU output regresses the raw (non-negative) gaps.
        mean, std = 0.0, 1.0
    else:
        # Standardised targets keep the regression well conditioned whatever the loss scale.
        mean, std = float(targets.mean()), float(targets.std()) or 1.0
    x = torch.from_numpy(feats)
    y = torch.from_numpy(((targets - mean) / std).astype(np.float32))
    # One thread: batches this small gain nothing from intra-op threads, and on a busy
    # 2-core machine 2 threads made training 50x slower (10 s vs 0.2 s, measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # A private RNG stream: the caller's global torch state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if p["variant"] == "seed":
                net = seed_net(x.shape[1] // 3, p["hidden"])
            else:
                net = torch.nn.Sequential(
                    torch.nn.Linear(x.shape[1], p["hidden"]),
                    torch.nn.ReLU(),
                    torch.nn.Linear(p["hidden"], 1),
                )
            history = _fit(net, x, y, p)
    finally:
        torch.set_num_threads(threads)
    net.eval()
    if p["objective"] == "margin":
        # Ranking scores: only their order means something, so no loss units are implied.
        mean, std = 0.0, 1.0
    return LossNet(net, mean, std), history


def _fit(net, x, y, p: dict) -> list[float]:
    """Adam over shuffled mini-batches; the mean training loss of each epoch."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=p["learning_rate"])
    mse = torch.nn.MSELoss()
    ranking = torch.nn.MarginRankingLoss(margin=RANKING_MARGIN)
    net.train()
    history: list[float] = []
    for _ in range(p["epochs"]):
        order = torch.randperm(len(x))
        total, count = 0.0, 0
        for start in range(0, len(x), p["batch_size"]):
            batch = order[start : start + p["batch_size"]]
            pred = net(x[batch]).squeeze(1)
            if p["objective"] == "mse":
                loss = mse(pred, y[batch])
            else:
                # Random pairs within the batch, labelled by which has the larger true loss;
                # ties (and an example paired with itself) carry no order and are skipped.
                partner = torch.randperm(len(batch))
                sign = torch.sign(y[batch] - y[batch][partner])
                use = sign != 0
                if not use.any():
                    continue
                loss = ranking(pred[use], pred[partner][use], sign[use])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
            count += len(batch)
        if count:
            history.append(total / count)
    return history


def predict(model: LossNet, feats: np.ndarray) -> np.ndarray:
    """Predicted loss per row of features (a ranking score for the "margin" objective)."""
    import torch

    if len(feats) == 0:
        return np.zeros(0, dtype=np.float64)
    with torch.no_grad():
        out = model.net(torch.from_numpy(np.asarray(feats, dtype=np.float32))).squeeze(1)
    return out.numpy().astype(np.float64) * model.std + model.mean


def lossnet_filter(
    records: list[dict],
    corpus: list[dict] | Passages,
    retriever: str,
    params: dict,
    gold: list[dict] | None = None,
) -> tuple[list[dict], dict]:
    """Score candidate query records with a LossNet and keep the hardest; return records, stats.

    Candidates are the records with `kept` true or absent; the others (dropped by an earlier
    filter) are passed through unchanged. `gold` query records ({id, doc_id, query}) only add
    labelled training examples. `retriever` is a sentence-transformers folder or name.
    """
    started = time.monotonic()
    p = check_params(params)
    seed = p.get("seed", DEFAULT_SEED)
    gold = gold or []
    # Only the passages the records name (and, below, their negatives) are read.
    named = (rec.get("doc_id") for rec in [*records, *gold])
    passages = passages_with_ids(corpus, (d for d in named if isinstance(d, str)))
    for rec in [*records, *gold]:
        for key in ("id", "doc_id", "query"):
            if key not in rec:
                raise ValueError(f"lossnet: query record {rec.get('id')!r} has no field {key!r}")
        if rec["doc_id"] not in passages:
            raise ValueError(
                f"lossnet: record {rec['id']!r} names doc_id {rec['doc_id']!r}, "
                "which is not in the corpus"
            )
    cand = [i for i, rec in enumerate(records) if rec.get("kept", True) is True]
    stats: dict[str, Any] = {
        "n_records": len(records),
        "n_candidates": len(cand),
        "n_gold": len(gold),
        "n_labelled": 0,
        "n_holdout": 0,
        "n_kept": 0,
        "spearman_holdout": None,
        "train_loss_first": None,
        "train_loss_last": None,
        "variant": p["variant"],
        "objective": p["objective"],
        "keep": p["keep"],
    }
    if not cand:
        stats["seconds"] = round(time.monotonic() - started, 2)
        return [dict(rec) for rec in records], stats

    # Labelled sample: a seeded share of the candidates, plus every gold pair.
    rng = np.random.default_rng(stable_seed(seed, "lossnet-labelled"))
    n_lab = max(1, round(p["labelled_fraction"] * len(cand)))
    lab_cand = sorted(rng.choice(len(cand), size=n_lab, replace=False).tolist())
    # Rows: the candidates first, then the gold pairs (labelled only).
    rows = [records[i] for i in cand] + list(gold)
    labelled = lab_cand + list(range(len(cand), len(rows)))
    n_hold = round(p["holdout_fraction"] * len(labelled))
    held = set(rng.choice(labelled, size=n_hold, replace=False).tolist()) if n_hold else set()
    train_rows = [r for r in labelled if r not in held]
    hold_rows = sorted(held)
    if len(train_rows) < 2:
        raise ValueError(
            f"lossnet: only {len(train_rows)} labelled training example(s); raise "
            "labelled_fraction, lower holdout_fraction or add candidates"
        )

    queries = [r["query"] for r in rows]
    sources = [r["doc_id"] for r in rows]
    negatives = hard_negatives(queries, sources, corpus, p["negatives_depth"], seed)
    passages |= passages_with_ids(corpus, set(negatives) - set(passages))

    doc_ids = sorted(set(sources) | set(negatives))
    doc_texts = [passage_text(passages[d]) for d in doc_ids]
    where = {d: i for i, d in enumerate(doc_ids)}
    src = [where[d] for d in sources]
    neg = [where[d] for d in negatives]

    # True losses, with the retriever's vectors of the labelled rows.
    retriever_model = _load(retriever, p)
    same = resolve_encoder(p["encoder"]) == resolve_encoder(retriever)
    wanted = list(range(len(rows))) if same else labelled
    r_q = encode(retriever_model, [p["query_prefix"] + queries[r] for r in wanted], p)
    r_docs = encode(retriever_model, [p["passage_prefix"] + t for t in doc_texts], p)
    at = {r: i for i, r in enumerate(wanted)}
    lab_q = r_q[[at[r] for r in labelled]]
    lab_pos, lab_neg = r_docs[[src[r] for r in labelled]], r_docs[[neg[r] for r in labelled]]
    if p["variant"] == "seed":
        lab_targets = cosine_gaps(lab_q, lab_pos, lab_neg)
    else:
        lab_targets = contrastive_losses(lab_q, lab_pos, lab_neg, p["scale"])
    target = dict(zip(labelled, lab_targets.tolist(), strict=True))

    # Frozen features. When the encoder is the retriever, its vectors are reused; another
    # encoder gets no prefixes (they are the retriever's instructions).
    if same:
        q_vec, doc_vec = r_q, r_docs
    else:
        encoder = _load(p["encoder"], p)
        q_vec = encode(encoder, queries, p)
        doc_vec = encode(encoder, doc_texts, p)
    feats = features(q_vec, doc_vec[src], doc_vec[neg], p["variant"])

    model, history = train_lossnet(
        feats[train_rows], np.array([target[r] for r in train_rows]), {**p, "seed": seed}
    )
    # Rounded once: selection uses exactly the values the records show.
    predicted = [round(float(v), 4) for v in predict(model, feats[: len(cand)])]
    if len(hold_rows) >= 2:
        stats["spearman_holdout"] = _spearman(
            predict(model, feats[hold_rows]), np.array([target[r] for r in hold_rows])
        )

    if p["keep"] == "top_fraction":
        n_keep = math.ceil(p["top_fraction"] * len(cand) - 1e-9)
        # Stable sort: equal predictions keep their input order, so the cut is reproducible.
        order = sorted(range(len(cand)), key=lambda j: -predicted[j])
        keep = set(order[:n_keep])
    else:
        keep = {j for j in range(len(cand)) if predicted[j] >= p["threshold"]}

    out = [dict(rec) for rec in records]
    for j, i in enumerate(cand):
        out[i]["filters"] = {
            **records[i].get("filters", {}),
            "lossnet": predicted[j],
        }
        out[i]["kept"] = j in keep
    stats.update(
        n_labelled=len(labelled),
        n_holdout=len(hold_rows),
        n_kept=len(keep),
        train_loss_first=round(history[0], 4) if history else None,
        train_loss_last=round(history[-1], 4) if history else None,
        true_loss_mean=round(float(lab_targets.mean()), 4),
        seconds=round(time.monotonic() - started, 2),
    )
    return out, stats


def _load(name: str, params: dict):
    # The node's trust_remote_code is about its encoder; a trained retriever's folder
    # records its own.
    trust = params.get("trust_remote_code") if name == params["encoder"] else None
    return load_encoder({**params, "encoder": name, "trust_remote_code": trust})


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    rho = spearmanr(a, b).statistic
    # Constant predictions or targets have no rank correlation.
    return None if np.isnan(rho) else round(float(rho), 4)
