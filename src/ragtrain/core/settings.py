"""A node's settings over its kind's defaults: the one place defaults are applied.

The config graph (ragtrain.graph.config.prepare) fills every node with it, and a stage
run alone (`python -m ragtrain <stage> --params ...`) or a function called from a test
fills its params the same way. Nested maps (a model's `lora`, a product's `generation`)
merge key by key; lists and scalars given replace the default.
"""

from __future__ import annotations

import copy
from typing import Any


def merge(defaults: dict, given: dict) -> dict:
    """A deep copy of `defaults` with `given` laid over it, maps merged key by key."""
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def with_defaults(
    params: dict, defaults: dict[str, dict[str, Any]] | dict[str, Any], kinds: bool = True
) -> dict:
    """`params` over its defaults. With `kinds` (the default), `defaults` maps each kind
    to its defaults and `params["kind"]` picks one; an unknown kind is a ValueError."""
    if kinds:
        kind = params.get("kind")
        if kind not in defaults:
            raise ValueError(f"kind: expected one of {sorted(defaults)}, got {kind!r}")
        defaults = defaults[kind]
    return merge(defaults, params)
