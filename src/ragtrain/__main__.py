"""`python -m ragtrain <stage> ...`: every workflow stage, runnable alone.

Each stage takes the node's config as JSON (`--params '{...}'` or `--params @node.json`),
reads its inputs, and writes its outputs atomically. Bad input ends the stage with
a one-line error (`path:line: what is wrong`) and exit status 1.

The stages are declared by family in ragtrain.stages; this module builds the top parser,
sets up logging and redaction, and dispatches. A stage's run imports its own family's
module alone (each rule's conda env holds what its stages import, not every stage's);
`--help` imports them all.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ragtrain.core.security import install_redaction, redact
from ragtrain.stages import families

log = logging.getLogger("ragtrain")


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `stage`, only the stages of its family's module."""
    parser = argparse.ArgumentParser(prog="python -m ragtrain", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")
    for family in families(stage):
        family.register(stages)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The stage is the first word that is not an option (the top parser's options,
    # -v and -h, take no value).
    stage = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(stage).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Tokens come from the environment only; their values never reach a log.
    install_redaction()
    try:
        args.func(args)
    except (ValueError, OSError) as e:
        # Bad input or settings (RecordError is a ValueError): one line that says where
        # and what; the traceback only with --verbose.
        log.debug("traceback", exc_info=True)
        print(f"ragtrain {args.stage}: error: {redact(str(e))}", file=sys.stderr)
        return 1
    except KeyError as e:
        log.debug("traceback", exc_info=True)
        print(f"ragtrain {args.stage}: error: --params lacks the key {e}", file=sys.stderr)
        return 1
    return 0


# The vLLM engine spawns processes that re-import the main module: keep the guard.
if __name__ == "__main__":
    sys.exit(main())
