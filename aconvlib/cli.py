"""The ``aconv`` command line: ``aconv <subcommand> ...`` (also ``python -m aconvlib``).

Each module listed in ``COMMAND_MODULES`` contributes subcommands through ``register_cli(sub)``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "aconvlib.models.cli",
    "aconvlib.book",
    "aconvlib.mini.cli",
    "aconvlib.distill",
    "aconvlib.deltaconv_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aconv", description="aconvlib: self-attention locality and ΔConvBlocks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line, not a traceback, for user-facing errors
        from aconvlib.book import ChapterError
        from aconvlib.models import MissingWeightsError, UnknownModelError

        if isinstance(e, (ChapterError, MissingWeightsError, UnknownModelError, ValueError, FileNotFoundError)):
            print(f"aconv {args.command}: error: {e}", file=sys.stderr)
            return 1
        raise
    return 0
