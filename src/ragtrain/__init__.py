"""ragtrain: post-training LLMs for retrieval-augmented generation, as a Snakemake workflow."""

__version__ = "0.1.0"
