"""Evaluation of trained models and the run's report."""
