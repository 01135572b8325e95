"""The ``aconv`` command line (the top layer): ``aconv <subcommand> ...`` (also ``python -m aconvlib``).

Each module in :data:`COMMAND_MODULES` adds its subcommands with ``register(sub)``. Flags of the
run commands are generated from their config dataclasses (:func:`aconvlib.cli.options.add_config_flags`),
and every subcommand validates its arguments before any work. User mistakes (:data:`USER_ERRORS`)
print one line and exit 1 (argparse's usage errors exit 2); anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ["aconvlib.cli.models", "aconvlib.cli.book", "aconvlib.cli.regress", "aconvlib.cli.mini", "aconvlib.cli.distill", "aconvlib.cli.doctor",
                   "aconvlib.cli.convert"]


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user asked for something impossible (one line, no traceback)."""
    from ..analysis.capture import MemoryBudgetError
    from ..book.regression import RegressionError
    from ..book.runner import ChapterError
    from ..models import MissingWeightsError, UnknownModelError, UnsupportedPipelineError
    from .options import UsageError

    return (ChapterError, RegressionError, MissingWeightsError, UnknownModelError, UnsupportedPipelineError,
            MemoryBudgetError, UsageError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aconv", description="aconvlib: self-attention locality and ΔConvBlocks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "pass_through", None):   # a wrapped tool (bench-*) parses its own arguments, --help included
        setattr(args, args.pass_through, extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except user_errors() as e:
        print(f"aconv {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["COMMAND_MODULES", "build_parser", "main", "user_errors"]
