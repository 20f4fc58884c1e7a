"""What recipe blocks share: checking a block's settings, adding the nodes it makes."""

from __future__ import annotations

from ragtrain.graph.kinds import ConfigError


def known_keys(key: str, given: dict, allowed: dict) -> None:
    """A block's settings become nodes the schema never saw: their keys are checked here."""
    for field in given:
        if field not in allowed:
            raise ConfigError(
                f"{key}.{field}", f"unknown key (known: {', '.join(sorted(allowed))})"
            )


def add_node(config: dict, block: str, section: str, name: str, node: dict) -> None:
    if name in config[section]:
        raise ConfigError(
            f"{section}.{name}", f"the {block} block makes a node of this name: rename one"
        )
    config[section][name] = node
