"""Judges: string rules, model judges (score / pick / label / relevance) and NLI scorers."""
