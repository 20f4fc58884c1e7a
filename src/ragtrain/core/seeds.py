"""Seeds: the run's default, and seeds derived from names (the same in every process)."""

from __future__ import annotations

import hashlib

DEFAULT_SEED = 13


def stable_seed(*parts: object) -> int:
    """A 31-bit seed derived from its parts (unlike hash(), the same in every process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
