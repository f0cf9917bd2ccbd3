"""Further subcommands (``run``, ``compare``) hook in here, keeping cli.py small."""

from __future__ import annotations

import argparse
from collections.abc import Callable

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _compare(args: argparse.Namespace) -> int:
    from framework.compare import cmd_compare

    return cmd_compare(args)


HANDLERS["compare"] = _compare


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """Add the subcommands defined outside cli.py."""
    from framework.compare import add_parser as add_compare_parser

    add_compare_parser(sub)
