"""Metrics, one module per family: QA answers and retrieval rankings."""
