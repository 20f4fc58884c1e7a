"""Indexes (BM25, dense), query filters, LossNet and retriever training."""
