"""The command line of every workflow stage, one module per family of stages.

Each module declares its stages' arguments next to their command functions and adds
them to the top parser with `register(stages)`; the commands parse, read, call the
domain modules and write. Only `ragtrain.__main__` imports this package: the layers
below never reach up into their command line.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

# The families in the workflow's order (`--help` lists them so): data, retrieval,
# models, the data models make, evaluation. A module added beside them (a new kind's or
# recipe's own stages) is found by name and listed after them.
ORDER = ("data", "retrieval", "training", "products", "queries", "evaluation")


def families() -> list[ModuleType]:
    """Every module of this package that registers stages (has a `register`)."""
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "common")
    names = [*ORDER, *(n for n in found if n not in ORDER)]
    modules = [importlib.import_module(f"{__name__}.{name}") for name in names]
    return [m for m in modules if hasattr(m, "register")]
