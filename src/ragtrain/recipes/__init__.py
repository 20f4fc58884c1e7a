"""Recipes: published methods written as blocks that expand into ordinary nodes.

A recipe block is a top-level config key (`pseudo_query:`, `backtracking:`); its module's
`expand(config)` adds the nodes it stands for, before the config graph fills defaults and
checks them, so every node a recipe makes is checked like a hand-written one.
"""

from __future__ import annotations

from collections.abc import Callable

from ragtrain.recipes import backtracking, pseudo_query

# Top-level config key -> the function that expands the block in place.
RECIPES: dict[str, Callable[[dict], None]] = {
    "pseudo_query": pseudo_query.expand,
    "backtracking": backtracking.expand,
}
