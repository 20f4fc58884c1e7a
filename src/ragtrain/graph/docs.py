"""config/README.md's key tables, written from the kind registry (`make docs`).

Each section of config/README.md that lists node keys holds a marked block,
`<!-- kinds: <section> -->` ... `<!-- /kinds -->`; this module rewrites every block
with one table per kind of that section (key, default, meaning), so a default or a
key's meaning is written once, in ragtrain.graph.kinds and the modules it reads.
`python -m ragtrain.graph.docs --check config/README.md` fails where the file differs
(a test runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ragtrain.graph.key_docs import GENERATION_DOCS
from ragtrain.graph.kinds import COMMON_KEYS, GENERATION_DEFAULTS, Kind, kinds_of

# The top-level `generation` map: documented like a kind, though no node has it.
GENERATION = Kind(
    "generation",
    "generation",
    "defaults of every stage that generates; a node's or an evaluate entry's own"
    " `generation` goes over them",
    defaults=GENERATION_DEFAULTS,
    docs=GENERATION_DOCS,
)
BLOCK = re.compile(r"(<!-- kinds: (\w+) -->\n).*?(<!-- /kinds -->)", re.DOTALL)


def _value(value) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def _default(kind: Kind, key: str) -> str:
    if key in kind.required:
        return "(required)"
    if key in kind.one_of:
        return f"(one of {', '.join(kind.one_of)})"
    if key == "seed" and key in kind.defaults:
        return "top-level `seed`"
    if key == "tracking" and key in kind.defaults:
        return "top-level `tracking`"
    if key in kind.defaults:
        return _value(kind.defaults[key])
    return ""


def kind_table(kind: Kind) -> str:
    """One kind's heading, summary and key table."""
    name = kind.name.replace(".", "`, `filter: ")
    lines = [
        f"#### {kind.name}"
        if kind.name in ("world", "corpus", "generation")
        else f"#### `kind: {name}`",
        "",
        f"{kind.summary[0].upper()}{kind.summary[1:]}."
        + (f" Stage `{kind.stage}`, rule `{kind.rule}`." if kind.stage else ""),
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    keys = sorted(kind.keys - set(COMMON_KEYS), key=lambda k: (k not in kind.required, k))
    for key in keys:
        lines.append(f"| `{key}` | {_default(kind, key)} | {kind.docs.get(key, '')} |")
    return "\n".join(lines)


def section_tables(section: str) -> str:
    kinds = [GENERATION] if section == "generation" else kinds_of(section).values()
    return "\n\n".join(kind_table(k) for k in kinds)


def render(text: str) -> str:
    """The text with every marked block rewritten from the registry."""
    return BLOCK.sub(lambda m: f"{m[1]}\n{section_tables(m[2])}\n\n{m[3]}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("readme", type=Path, help="config/README.md")
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{args.readme} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
