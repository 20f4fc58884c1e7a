"""Data in: synthetic worlds, public formats (BEIR, QA JSONL), prompt templates."""
