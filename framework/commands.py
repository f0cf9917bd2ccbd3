"""Further subcommands (``run``, ``compare``, ``demo``) hook in here, keeping cli.py small.

Their heavy modules (Lightning, wandb, matplotlib, Gradio) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _cmd_run(args: argparse.Namespace) -> int:
    from framework.experiment.run import cmd_run

    return cmd_run(args)


def _cmd_compare(args: argparse.Namespace) -> int:
    from framework.compare import cmd_compare

    return cmd_compare(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from framework.demo import cmd_demo

    return cmd_demo(args)


HANDLERS["run"] = _cmd_run
HANDLERS["compare"] = _cmd_compare
HANDLERS["demo"] = _cmd_demo


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """Add the subcommands defined outside cli.py."""
    from framework.compare import add_parser as add_compare_parser
    from framework.demo import add_parser as add_demo_parser  # argparse only; Gradio loads in cmd_demo
    from framework.runner_cli import add_run_parser

    add_run_parser(sub)
    add_compare_parser(sub)
    add_demo_parser(sub)
