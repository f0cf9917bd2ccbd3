"""Further subcommands (``run``, ``compare``) hook in here, keeping cli.py small."""

from __future__ import annotations

import argparse
from collections.abc import Callable

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    """Add the subcommands defined outside cli.py."""
