"""Further subcommands (``run``, ``compare``) hook in here, keeping cli.py small."""

from __future__ import annotations

import argparse
from collections.abc import Callable

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """Add the subcommands defined outside cli.py."""
    from framework.runner_cli import add_run_parser

    add_run_parser(sub)


def _cmd_run(args: argparse.Namespace) -> int:
    from framework.runner import cmd_run

    return cmd_run(args)


HANDLERS["run"] = _cmd_run
