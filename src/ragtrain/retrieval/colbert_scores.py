"""ColBERT's L2 late-interaction score, which PyLate (MaxSim over inner products only) lacks.

score(q, d) = sum over query tokens i of max over document tokens j of -||q_i - d_j||^2,
ColBERT's `similarity l2` (SPTAR's setting). Padding tokens of a document are left out of
the max (not scored 0 as PyLate's MaxSim does by multiplying with the mask: a distance
score is never above 0, so a zeroed pad would win); masked query tokens add nothing.

`L2Scores` is a `score_metric` for PyLate's Contrastive loss; `l2_rerank` has the shape of
`pylate.rank.rerank`. Imported only where ColBERT runs (it needs torch).
"""

from __future__ import annotations

import torch


def l2_maxsim(
    queries: torch.Tensor,
    documents: torch.Tensor,
    queries_mask: torch.Tensor | None = None,
    documents_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """(Q, Qt, H) query tokens and (D, Dt, H) document tokens -> (Q, D) L2 scores.

    A document needs at least one unmasked token (ColBERT's always keep [CLS] and their
    marker token).
    """
    queries, documents = torch.as_tensor(queries), torch.as_tensor(documents)
    # ||q - d||^2 = |q|^2 + |d|^2 - 2 q.d, as one product rather than a (Q, D, Qt, Dt, H) diff.
    dist = (
        queries.pow(2).sum(-1)[:, None, :, None]
        + documents.pow(2).sum(-1)[None, :, None, :]
        - 2 * torch.einsum("ash,bth->abst", queries, documents)
    )
    # Rounding can make a zero distance slightly negative.
    sim = -dist.clamp_min(0)
    if documents_mask is not None:
        keep = torch.as_tensor(documents_mask, device=sim.device).bool()
        sim = sim.masked_fill(~keep[None, :, None, :], float("-inf"))
    best = sim.max(dim=-1).values  # (Q, D, Qt)
    if queries_mask is not None:
        use = torch.as_tensor(queries_mask, device=best.device).bool()
        best = best.masked_fill(~use[:, None, :], 0.0)
    return best.sum(dim=-1)


class L2Scores:
    """PyLate Contrastive's `score_metric` with L2 scores: (Q, Qt, H) queries and
    (D, N, Dt, H) groups of N documents -> (Q, D * N), column d * N + k for group d's
    k-th document (query-major, as pylate.scores.ColBERTScores)."""

    def __call__(
        self,
        queries_embeddings: torch.Tensor,
        documents_embeddings: torch.Tensor,
        queries_mask: torch.Tensor | None = None,
        documents_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n_docs, n_slots = documents_embeddings.shape[:2]
        per_slot = [
            l2_maxsim(
                queries_embeddings,
                documents_embeddings[:, k],
                queries_mask,
                documents_mask[:, k] if documents_mask is not None else None,
            )
            for k in range(n_slots)
        ]
        return torch.stack(per_slot, dim=2).reshape(-1, n_docs * n_slots)


def l2_rerank(
    documents_ids: list[list],
    queries_embeddings: list,
    documents_embeddings: list[list],
) -> list[list[dict]]:
    """Each query's candidates by L2 score, best first: [{"id", "score"}] per query, as
    pylate.rank.rerank returns them."""
    results = []
    rows = zip(documents_ids, queries_embeddings, documents_embeddings, strict=True)
    for ids, query, docs in rows:
        if not ids:
            results.append([])
            continue
        tensors = [torch.as_tensor(d, dtype=torch.float32) for d in docs]
        padded = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)
        lengths = torch.tensor([len(t) for t in tensors])
        mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
        query = torch.as_tensor(query, dtype=torch.float32)
        scores = l2_maxsim(query[None], padded, documents_mask=mask)[0]
        order = torch.sort(scores, descending=True, stable=True)
        results.append(
            [
                {"id": ids[i], "score": float(s)}
                for s, i in zip(order.values.tolist(), order.indices.tolist(), strict=True)
            ]
        )
    return results
