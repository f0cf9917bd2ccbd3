"""Further subcommands (``run``, ``compare``) hook in here, keeping cli.py small.

Their heavy modules (Lightning, wandb, matplotlib) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _cmd_run(args: argparse.Namespace) -> int:
    from framework.runner import cmd_run

    return cmd_run(args)


def _cmd_compare(args: argparse.Namespace) -> int:
    from framework.compare import cmd_compare

    return cmd_compare(args)


HANDLERS["run"] = _cmd_run
HANDLERS["compare"] = _cmd_compare


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """Add the subcommands defined outside cli.py."""
    from framework.compare import add_parser as add_compare_parser
    from framework.runner_cli import add_run_parser

    add_run_parser(sub)
    add_compare_parser(sub)
