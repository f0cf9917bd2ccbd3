"""The ``run`` subcommand's arguments (kept free of heavy imports: the CLI builds every parser)."""

from __future__ import annotations

import argparse


def add_run_parser(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    run = sub.add_parser(
        "run",
        help="run an experiment config: many images x methods x sweeps, on any number of devices",
        description="Run every method (and sweep point) of an experiment config over a dataset with "
        "Lightning's Trainer.predict; writes <output_dir>/results.csv, summary.csv, images/ and "
        "config.yaml (and config_history/). Running it again on the same output_dir does only the missing rows; a run of another configuration into it is refused unless --force.",
        epilog="Overrides: key=value, e.g. output_dir=runs/x seed=1 trainer.devices=2 logger.name=none.",
    )
    run.add_argument("config", help="an experiment YAML file or a name in configs/experiment/")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    run.add_argument(
        "--force",
        action="store_true",
        help="run even when output_dir holds a run of another configuration (its rows are kept; "
        "without --force such a run is refused; adding methods needs no --force)",
    )
    # REMAINDER: options may come after the overrides too (cmd_run picks --no-progress out of them)
    run.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value", help="config overrides")
