"""DPA-RAG's reranker: a cross-encoder trained to rank the documents an LLM can use first.

DPA-RAG ("Understand What LLM Needs: Dual Preference Alignment for RAG") aligns the
reranker with what the reader model needs, not with topical relevance alone. The model is
any HF encoder over a (query, document) text pair with `nn.Linear(hidden, 2)` on the first
token's last hidden state: class 1 is "aligned" (the document helps the LLM), class 0 is
not, and a document's ranking score is its class-1 logit.

Three losses, each switchable (`losses`):

- classification: cross-entropy of the logits on (query, classification.doc);
- ranking: RankNet over each record's `rank_list` (best first), `-log sigmoid(s_i - s_j)`
  for every i before j, averaged over the batch's pairs;
- contrastive: supervised contrastive loss (Khosla et al. 2020, "L_out") per record over
  the first-token embeddings of its positive and negative documents.

They are combined per step either with `fixed` weights or by MGDA (Sener & Koltun 2018):
the weights are the min-norm point of the convex hull of the losses' gradients w.r.t. the
shared encoder, found by Frank-Wolfe. That point is a common descent direction, so no loss
is traded for another. Each step's weights are logged (`weights.jsonl`, `weights.png`).

Wiring (kinds, stages, rules) lives elsewhere; `train_reranker` writes into a folder the
caller makes atomic.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ragtrain.core.records import write_jsonl
from ragtrain.core.security import folder_trusts_remote_code, write_model_meta
from ragtrain.retrieval.index import passage_text, resolve_encoder

# Settings live beside reranked retrieval: the kind registry reads them without torch.
from ragtrain.retrieval.rerank import LOSSES, RERANKER_DEFAULTS, WEIGHTINGS

log = logging.getLogger(__name__)

ALIGNED = 1  # the head's class for "the document helps the LLM"
HEAD_FILE = "head.safetensors"
META_FILE = "reranker.json"


# ---------------------------------------------------------------------------------------
# The math: pure functions on tensors.


def _two_point_gamma(aa: float, ab: float, bb: float) -> float:
    """The gamma in [0, 1] minimising |gamma*a + (1-gamma)*b|^2, from the dot products."""
    denom = aa + bb - 2 * ab  # |a - b|^2
    if denom <= 1e-20:  # a == b: every point of the segment is the same
        return 0.5
    return min(max((bb - ab) / denom, 0.0), 1.0)


def min_norm_weights(gram: torch.Tensor, max_iter: int = 250, tol: float = 1e-7) -> torch.Tensor:
    """alpha on the simplex minimising alpha^T gram alpha, by Frank-Wolfe with exact line
    search (returned in float64).

    It starts from the best vertex or edge (closed form), so an optimum there is exact at
    once. Plain Frank-Wolfe zigzags, converging only as 1/t, when the optimum lies on a face
    of 3+ vertices (measured: objective gaps of 1e-1 after 250 steps with 4-5 losses); away
    steps (Lacoste-Julien & Jaggi 2015), which move weight off the worst vertex in use,
    make it linear. It stops when the duality gap falls below `tol` times the largest
    squared gradient norm.
    """
    m = gram.detach().to(torch.float64).cpu()
    k = m.shape[0]
    if m.shape != (k, k) or k == 0:
        raise ValueError(f"min_norm_weights: need a square, non-empty Gram matrix, got {m.shape}")
    if k == 1:
        return torch.ones(1, dtype=torch.float64)
    scale = m.diagonal().max()
    if scale <= 0:  # all gradients zero: every alpha is optimal; take the centre
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    m = m / scale  # alpha is scale-free; this makes `tol` relative to the largest |g|^2
    alpha = _best_edge(m)
    for _ in range(max_iter):
        grad = m @ alpha  # half the objective's gradient
        value = (alpha @ grad).item()
        toward = int(torch.argmin(grad))
        gap = value - grad[toward].item()  # Frank-Wolfe duality gap: bounds the error
        if gap <= tol:
            break
        used = torch.nonzero(alpha > 0).flatten()
        away = int(used[torch.argmax(grad[used])])
        if gap >= grad[away].item() - value:
            direction = -alpha.clone()
            direction[toward] += 1
            largest = 1.0
        else:
            direction = alpha.clone()
            direction[away] -= 1
            largest = alpha[away].item() / (1 - alpha[away].item())
        curvature = (direction @ m @ direction).item()
        slope = (grad @ direction).item()
        step = largest if curvature <= 0 else min(-slope / curvature, largest)
        alpha = (alpha + step * direction).clamp_min(0)
        if step == largest and direction[away] < 0:  # an away step that drops its vertex
            alpha[away] = 0
        alpha /= alpha.sum()
    return alpha


def _best_edge(m: torch.Tensor) -> torch.Tensor:
    """The min-norm point over every vertex and edge of the simplex (closed form)."""
    k = m.shape[0]
    best, alpha = math.inf, torch.zeros(k, dtype=torch.float64)
    for i in range(k):
        for j in range(i, k):
            gamma = _two_point_gamma(m[i, i].item(), m[i, j].item(), m[j, j].item())
            candidate = torch.zeros(k, dtype=torch.float64)
            candidate[i] += gamma
            candidate[j] += 1 - gamma
            norm = (candidate @ m @ candidate).item()
            if norm < best:
                best, alpha = norm, candidate
    return alpha


def mgda_weights(grads: list[torch.Tensor]) -> torch.Tensor:
    """MGDA's weights for flattened gradient vectors: the min-norm point of their hull."""
    flat = torch.stack([g.detach().reshape(-1).to(torch.float64) for g in grads])
    return min_norm_weights(flat @ flat.T)


def ranking_loss(scores: list[torch.Tensor]) -> torch.Tensor | None:
    """RankNet over each record's scores in rank order (best first): the mean over all
    pairs i < j of the batch of -log sigmoid(s_i - s_j); None when no record has a pair."""
    terms = []
    for s in scores:
        if s.numel() < 2:
            continue
        i, j = torch.triu_indices(s.numel(), s.numel(), offset=1, device=s.device)
        terms.append(-F.logsigmoid(s[i] - s[j]))
    if not terms:
        return None
    return torch.cat(terms).mean()


def supervised_contrastive_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor | None:
    """SupCon's L_out (Khosla et al. 2020) over `features` (L2-normalised here): per anchor,
    the mean over its positives p of -log softmax_{a != anchor}(z.z_a / t)[p], averaged over
    the anchors that have a positive; None when none has one."""
    z = F.normalize(features, dim=-1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(eye, -math.inf)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    partners = (labels[:, None] == labels[None, :]) & ~eye
    count = partners.sum(1)
    anchors = count > 0
    if not anchors.any():
        return None
    # masked_fill rather than a product: the diagonal's -inf times 0 would be NaN.
    summed = log_prob.masked_fill(~partners, 0.0).sum(1)
    return -(summed[anchors] / count[anchors]).mean()


# ---------------------------------------------------------------------------------------
# The model.


class CrossEncoderReranker(nn.Module):
    """An HF encoder over (query, document) with a 2-class head on the first token."""

    def __init__(self, encoder, tokenizer, trust_remote_code: bool = False):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.head = nn.Linear(encoder.config.hidden_size, 2)
        self.trust_remote_code = trust_remote_code

    @classmethod
    def from_encoder(
        cls, encoder: str, seed: int, trust_remote_code: bool = False
    ) -> CrossEncoderReranker:
        """A fresh head on a pretrained encoder; the head (and any weights the checkpoint
        lacks, e.g. a pooler) drawn from `seed`, leaving the caller's RNG untouched."""
        from transformers import AutoModel, AutoTokenizer

        if not isinstance(trust_remote_code, bool):
            raise ValueError(
                f"trust_remote_code: expected true or false, got {trust_remote_code!r}"
            )
        path = resolve_encoder(encoder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            return cls(model, tokenizer, trust_remote_code)

    @classmethod
    def load(cls, folder: str | Path) -> CrossEncoderReranker:
        """A reranker as `save` wrote it."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        encoder_dir = folder / "encoder"
        trust = folder_trusts_remote_code(encoder_dir)
        model = AutoModel.from_pretrained(encoder_dir, trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir, trust_remote_code=trust)
        reranker = cls(model, tokenizer, trust)
        reranker.head.load_state_dict(load_file(folder / HEAD_FILE))
        return reranker

    def save(self, folder: str | Path) -> None:
        """encoder/ (model and tokenizer), the head as safetensors, and reranker.json."""
        from safetensors.torch import save_file

        folder = Path(folder)
        encoder_dir = folder / "encoder"
        self.encoder.save_pretrained(encoder_dir)
        self.tokenizer.save_pretrained(encoder_dir)
        write_model_meta(encoder_dir, self.trust_remote_code)
        head = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, folder / HEAD_FILE)
        meta = {
            "kind": "reranker",
            "hidden_size": self.head.in_features,
            "classes": {"0": "not aligned", "1": "aligned"},
            "score": "class-1 logit",
            "pooling": "first token",
            "trust_remote_code": self.trust_remote_code,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def _first_token(self, queries: list[str], docs: list[dict], max_length: int) -> torch.Tensor:
        batch = self.tokenizer(
            list(queries),
            [passage_text(d) for d in docs],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        return self.encoder(**batch).last_hidden_state[:, 0]

    def logits(self, queries: list[str], docs: list[dict], max_length: int) -> torch.Tensor:
        """[n, 2] head logits of the pairs (queries[i], docs[i])."""
        return self.head(self._first_token(queries, docs, max_length))

    def embeddings(self, queries: list[str], docs: list[dict], max_length: int) -> torch.Tensor:
        """[n, hidden] first-token last hidden states of the pairs (queries[i], docs[i])."""
        return self._first_token(queries, docs, max_length)

    @torch.no_grad()
    def scores(
        self, query: str, docs: list[dict], max_length: int = 256, batch_size: int = 32
    ) -> list[float]:
        """Each document's ranking score for `query` (class-1 logit), without dropout."""
        was_training = self.training
        self.eval()
        try:
            out: list[float] = []
            for start in range(0, len(docs), batch_size):
                chunk = docs[start : start + batch_size]
                out += self.logits([query] * len(chunk), chunk, max_length)[:, ALIGNED].tolist()
            return out
        finally:
            self.train(was_training)


def classification_metrics(model, records: list[dict], max_length: int = 256) -> dict:
    """Precision, recall and F1 of the aligned class on each record's labelled document
    (predicted aligned iff the class-1 logit is the larger), accuracy, n and n_aligned.
    Precision (recall) is 0 when nothing is predicted (labelled) aligned; all None at n=0."""
    labelled = [r for r in records if r.get("classification")]
    gold = [bool(r["classification"]["relevant"]) for r in labelled]
    predicted: list[bool] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(labelled), 32):
                chunk = labelled[start : start + 32]
                logits = model.logits(
                    [r["query"] for r in chunk],
                    [r["classification"]["doc"] for r in chunk],
                    max_length,
                )
                predicted += (logits.argmax(-1) == ALIGNED).tolist()
    finally:
        model.train(was_training)
    n = len(gold)
    tp = sum(g and p for g, p in zip(gold, predicted, strict=True))
    n_predicted = sum(predicted)
    n_aligned = sum(gold)
    correct = sum(g == p for g, p in zip(gold, predicted, strict=True))
    if n == 0:
        precision = recall = f1 = accuracy = None
    else:
        precision = tp / n_predicted if n_predicted else 0.0
        recall = tp / n_aligned if n_aligned else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        accuracy = correct / n
    return {
        "precision": _round(precision),
        "recall": _round(recall),
        "f1": _round(f1),
        "accuracy": _round(accuracy),
        "n": n,
        "n_aligned": n_aligned,
        "n_predicted_aligned": n_predicted,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


# ---------------------------------------------------------------------------------------
# Training.


def check_settings(settings: dict) -> dict:
    """Defaults filled in; a ValueError naming the key for a bad value."""
    s = {**RERANKER_DEFAULTS, **settings}
    losses = s["losses"]
    if isinstance(losses, str) or not isinstance(losses, list | tuple) or not losses:
        raise ValueError(f"reranker: losses must be a non-empty list of {LOSSES}, got {losses!r}")
    unknown = [name for name in losses if name not in LOSSES]
    if unknown:
        raise ValueError(
            f"reranker: unknown loss {unknown[0]!r}; known losses: {', '.join(LOSSES)}"
        )
    s["losses"] = [name for name in LOSSES if name in losses]  # deduplicated, in LOSSES order
    if s["weighting"] not in WEIGHTINGS:
        raise ValueError(
            f"reranker: weighting must be one of {', '.join(WEIGHTINGS)}, got {s['weighting']!r}"
        )
    weights = s["weights"] or {}
    if not isinstance(weights, dict):
        raise ValueError(f"reranker: weights must be a mapping {{loss: weight}}, got {weights!r}")
    if weights and s["weighting"] != "fixed":
        raise ValueError(f"reranker: weights apply to weighting 'fixed', not {s['weighting']!r}")
    for name, weight in weights.items():
        if name not in s["losses"]:
            raise ValueError(
                f"reranker: weights name loss {name!r}, which is not enabled"
                f" (losses: {', '.join(s['losses'])})"
            )
        if not _is_number(weight) or weight < 0:
            raise ValueError(f"reranker: weights.{name} must be a number >= 0, got {weight!r}")
    # A loss the weights leave out keeps the default weight, 1 (equal to the others').
    s["weights"] = {name: float(weights.get(name, 1.0)) for name in s["losses"]}
    if not any(s["weights"].values()):
        raise ValueError("reranker: weights are all 0")
    for key in ("epochs", "batch_size", "max_length", "contrastive_per_side"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"reranker: {key} must be a positive integer, got {s[key]!r}")
    for key in ("learning_rate", "temperature"):
        if not _is_number(s[key]) or s[key] <= 0:
            raise ValueError(f"reranker: {key} must be a positive number, got {s[key]!r}")
    if not _is_number(s["warmup_ratio"]) or not 0 <= s["warmup_ratio"] <= 1:
        raise ValueError(f"reranker: warmup_ratio must be in [0, 1], got {s['warmup_ratio']!r}")
    return s


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def batch_losses(
    model: CrossEncoderReranker, batch: list[dict], s: dict
) -> dict[str, torch.Tensor]:
    """The enabled losses that `batch` has data for, from one encoder pass over every pair
    they need."""
    queries: list[str] = []
    docs: list[dict] = []

    def add(query: str, passages: list[dict]) -> slice:
        queries.extend([query] * len(passages))
        docs.extend(passages)
        return slice(len(docs) - len(passages), len(docs))

    labelled, ranked, contrasted = [], [], []
    for r in batch:
        if "classification" in s["losses"] and r.get("classification"):
            target = ALIGNED if r["classification"]["relevant"] else 1 - ALIGNED
            labelled.append((add(r["query"], [r["classification"]["doc"]]), target))
        if "ranking" in s["losses"] and len(r.get("rank_list") or []) >= 2:
            ranked.append(add(r["query"], r["rank_list"]))
        if "contrastive" in s["losses"]:
            k = s["contrastive_per_side"]
            pos, neg = (r.get("positive") or [])[:k], (r.get("negative") or [])[:k]
            if len(pos) >= 2 or len(neg) >= 2:  # else no anchor has a partner
                labels = torch.tensor([1] * len(pos) + [0] * len(neg))
                contrasted.append((add(r["query"], pos + neg), labels))
    if not docs:
        return {}
    hidden = model.embeddings(queries, docs, s["max_length"])
    logits = model.head(hidden)
    out: dict[str, torch.Tensor] = {}
    if labelled:
        rows = torch.cat([logits[where] for where, _ in labelled])
        targets = torch.tensor([t for _, t in labelled], device=rows.device)
        out["classification"] = F.cross_entropy(rows, targets)
    if ranked and (loss := ranking_loss([logits[where, ALIGNED] for where in ranked])) is not None:
        out["ranking"] = loss
    per_record = []
    for where, labels in contrasted:
        loss = supervised_contrastive_loss(
            hidden[where], labels.to(hidden.device), s["temperature"]
        )
        if loss is not None:
            per_record.append(loss)
    if per_record:
        out["contrastive"] = torch.stack(per_record).mean()
    return out


def weighted_backward(model, losses: dict[str, torch.Tensor], s: dict) -> dict[str, float]:
    """Set the parameters' gradients for this step's losses; return the weights used."""
    names = list(losses)
    if s["weighting"] == "fixed":
        # Relative weights, renormalised over the losses this step has; a step whose losses
        # all weigh 0 leaves the gradients at 0 rather than training on a disabled loss.
        total = sum(s["weights"][name] for name in names)
        weights = {name: s["weights"][name] / total if total else 0.0 for name in names}
    elif len(names) == 1:
        weights = {names[0]: 1.0}
    else:
        return _mgda_backward(model, losses)
    sum(weights[name] * losses[name] for name in names).backward()
    return weights


def _mgda_backward(model, losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """MGDA over the encoder's parameters. Each loss's gradient is taken once, over every
    parameter; the step's gradient is their alpha-weighted sum, which is exactly the
    gradient of sum(alpha_i L_i) without a further backward pass."""
    shared = [p for p in model.encoder.parameters() if p.requires_grad]
    params = shared + [p for p in model.head.parameters() if p.requires_grad]
    names = list(losses)
    grads = []
    for i, name in enumerate(names):
        g = torch.autograd.grad(
            losses[name], params, retain_graph=i < len(names) - 1, allow_unused=True
        )
        grads.append(
            [torch.zeros_like(p) if gp is None else gp for p, gp in zip(params, g, strict=True)]
        )
    flat = [torch.cat([gp.reshape(-1) for gp in g[: len(shared)]]) for g in grads]
    alpha = mgda_weights(flat).tolist()
    for k, p in enumerate(params):
        p.grad = sum(a * g[k] for a, g in zip(alpha, grads, strict=True))
    return dict(zip(names, alpha, strict=True))


def train_reranker(
    train: list[dict], dev: list[dict], settings: dict, out_dir: Path, threads: int = 0
) -> dict:
    """Train a reranker on DPA-RAG records (ragtrain.data.preferences' dpa_rag shape) and
    write it into `out_dir` with its per-step weights (weights.jsonl, weights.png); return
    the metrics, dev classification before and after training included."""
    from transformers import get_linear_schedule_with_warmup

    s = check_settings(settings)
    if not train:
        raise ValueError("reranker: no training records")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        start = time.time()
        torch.manual_seed(s["seed"])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = CrossEncoderReranker.from_encoder(s["encoder"], s["seed"], s["trust_remote_code"])
        model.to(device)
        dev_before = classification_metrics(model, dev, s["max_length"])
        per_epoch = math.ceil(len(train) / s["batch_size"])
        total = per_epoch * s["epochs"]
        optimizer = torch.optim.AdamW(model.parameters(), lr=s["learning_rate"])
        schedule = get_linear_schedule_with_warmup(
            optimizer, math.ceil(s["warmup_ratio"] * total), total
        )
        shuffle = random.Random(s["seed"])
        history: list[dict] = []
        model.train()
        for epoch in range(s["epochs"]):
            order = list(range(len(train)))
            shuffle.shuffle(order)
            for first in range(0, len(order), s["batch_size"]):
                batch = [train[i] for i in order[first : first + s["batch_size"]]]
                losses = batch_losses(model, batch, s)
                if not losses:  # nothing in this batch for any enabled loss
                    continue
                optimizer.zero_grad(set_to_none=True)
                weights = weighted_backward(model, losses, s)
                optimizer.step()
                schedule.step()
                history.append(
                    {
                        "step": len(history) + 1,
                        "epoch": epoch + 1,
                        "losses": {k: round(v.item(), 6) for k, v in losses.items()},
                        "weights": {k: round(w, 6) for k, w in weights.items()},
                    }
                )
        if not history:
            raise ValueError(f"reranker: no training record has data for {s['losses']}")
        model.eval()
        dev_after = classification_metrics(model, dev, s["max_length"])
        model.to("cpu")
        model.save(out_dir)
        write_jsonl(out_dir / "weights.jsonl", history)
        plot_weights(history, s["losses"], out_dir / "weights.png")
    finally:
        torch.set_num_threads(previous_threads)
    # A loss absent from a step had weight 0 there, so the means sum to 1.
    mean_weights = {
        name: round(sum(h["weights"].get(name, 0.0) for h in history) / len(history), 4)
        for name in s["losses"]
    }
    metrics = {
        "kind": "reranker",
        "losses": s["losses"],
        "weighting": s["weighting"],
        "steps": len(history),
        "train_records": len(train),
        "dev_records": len(dev),
        "dev_before": dev_before,
        "dev": dev_after,
        "mean_weights": mean_weights,
        "seconds": round(time.time() - start, 1),
    }
    log.info("reranker: %d steps, dev %s -> %s", len(history), dev_before, dev_after)
    return metrics


def plot_weights(history: list[dict], losses: list[str], path: Path) -> None:
    """Each loss's weight per step (top) and its value (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    marker = "o" if len(history) <= 30 else None
    for name in losses:
        logged = [h for h in history if name in h["weights"]]
        steps = [h["step"] for h in logged]
        top.plot(steps, [h["weights"][name] for h in logged], label=name, marker=marker, ms=3)
        bottom.plot(steps, [h["losses"][name] for h in logged], label=name, marker=marker, ms=3)
    top.set_ylabel("weight")
    top.set_ylim(-0.05, 1.05)
    bottom.set_ylabel("loss")
    bottom.set_xlabel("step")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
