"""Foundations every layer uses: records, seeds, secrets, work folders."""
