"""Generation engines (vLLM, HF) and what they produce: samples, judgements, pseudo-queries."""
