"""``editfriendly compare RUN_DIR [RUN_DIR ...]``: a report that compares methods across runs.

Input: run folders, each with a ``results.csv`` (one row per item × method setting × target
prompt × seed) whose columns are ``item_id, method, target_prompt, source_prompt, seed, status,
error, output_path, input_path``, one column per swept parameter and one per metric value. Extra
columns are tolerated. Image paths are relative to the run folder or absolute.

Output (``out``): ``report.md`` and ``report.html`` with

- a table of method settings × metrics: mean ± half-width of the 95% confidence interval
  (Student's t over the rows with status ok and a finite value), rows and failed rows counted;
- ``scatter_clip_lpips.png``: CLIP score against LPIPS, one point per method and parameter
  setting, the settings of one method joined by a line (the paper's Figure 10);
- ``grids/grid_<item>.png``: for chosen (``items``) or sampled (``sample``) items, one row per
  target prompt: the input, then each method setting's edit;
- ``summary.csv``: the table in machine-readable form.

With ``--wandb`` (or when a run's ``config.yaml`` configures ``logger: {name: wandb}``) the same
table and images are logged to a wandb run (offline by default: ``wandb sync`` uploads later).

The package: ``runs`` (run folders, column roles), ``stats`` (grouping and statistics, also an
experiment's ``summary.csv``), ``figures`` (matplotlib figures), ``render`` (the report model and
its Markdown, HTML and wandb renderers), ``build`` (the pipeline). Importing this module loads
none of them, nor pandas, scipy or matplotlib.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framework.errors import InputError


def compare(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    items: Sequence[str] | None = None,
    sample: int = 4,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
    x: str | None = None,
    y: str | None = None,
    wandb: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the comparison report of ``run_dirs`` to ``out`` (default: RUN_DIR/compare, or
    ``compare_<a>_vs_<b>`` beside the runs).

    ``items`` (checked) or ``sample`` items drawn with ``seed`` get image grids; ``metrics`` and
    ``params`` name the column roles (default: detected, see ``framework.report.runs``); the
    scatter's columns are ``x``/``y``, else the first run config's ``compare: {x: ..., y: ...}``,
    else lpips and clip_score; ``wandb`` (project, mode, entity) also logs the report there.

    Returns {"out", "report_md", "report_html", "summary_csv", "scatter" (None if not drawn),
    "grids" (item → path), "groups", "metric_columns", "param_columns", "wandb_dir"}.
    Raises InputError for run folders, columns or items that are not there.
    """
    from framework.report.build import compare as build_report

    return build_report(
        run_dirs, out, items=items, sample=sample, seed=seed, metrics=metrics, params=params, x=x, y=y, wandb=wandb
    )


# ------------------------------------------------------------------------------------- CLI
def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``compare`` subcommand."""
    p = sub.add_parser(
        "compare",
        help="compare run directories: methods × metrics table, CLIP-vs-LPIPS scatter, image grids",
        description="Read RUN_DIR/results.csv of each run and write report.md, report.html, summary.csv, "
        "the CLIP-vs-LPIPS scatter (the paper's Figure 10) and image grids (input | each method) to --out.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or results.csv files)")
    p.add_argument("--out", help="report folder (default: RUN_DIR/compare, or compare_<a>_vs_<b> beside the runs)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--items", nargs="+", metavar="ID", help="item ids to show in image grids")
    sel.add_argument("--sample", type=int, default=4, metavar="N", help="grids for N items drawn at random (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the item sample (default 0)")
    p.add_argument("--metrics", nargs="+", metavar="COL", help="metric columns (default: detected)")
    p.add_argument("--params", nargs="+", metavar="COL", help="parameter columns (default: detected)")
    p.add_argument("--x", help="scatter x column (default: the run config's compare.x, else lpips)")
    p.add_argument("--y", help="scatter y column (default: the run config's compare.y, else clip_score)")
    p.add_argument(
        "--wandb", action="store_true", help="also log the report to wandb (offline unless --wandb-mode online)"
    )
    p.add_argument(
        "--no-wandb", action="store_true", help="do not log to wandb even if a run's config has a wandb logger"
    )
    p.add_argument("--wandb-project", help="wandb project (default: the run's logger.project or editfriendly)")
    p.add_argument("--wandb-mode", choices=["offline", "online", "disabled"], help="wandb mode (default offline)")


def wandb_settings(run_dirs: Sequence[str | Path], args: argparse.Namespace) -> dict[str, Any] | None:
    """wandb project/mode/entity when --wandb is given or a run's config has logger.name == wandb."""
    if getattr(args, "no_wandb", False):
        return None
    from framework.report.runs import read_run, wandb_logger

    logger = wandb_logger(read_run(d) for d in run_dirs)
    if not args.wandb and not logger:
        return None
    return {
        "project": args.wandb_project or logger.get("project") or "editfriendly",
        "mode": args.wandb_mode or logger.get("mode") or "offline",
        "entity": logger.get("entity"),
    }


def cmd_compare(args: argparse.Namespace) -> int:
    """Handler of ``editfriendly compare``: writes the report, prints the paths of its files."""
    settings = wandb_settings(args.run_dirs, args)
    if args.sample is not None and args.sample < 0:
        raise InputError(f"--sample must be >= 0, got {args.sample}")
    result = compare(
        args.run_dirs,
        args.out,
        items=args.items,
        sample=args.sample if args.sample is not None else 4,
        seed=args.seed,
        metrics=args.metrics,
        params=args.params,
        x=args.x,
        y=args.y,
        wandb=settings,
    )
    print(result["report_md"])
    print(result["report_html"])
    if result["scatter"]:
        print(result["scatter"])
    for path in result["grids"].values():
        print(path)
    if result["wandb_dir"]:
        print(f"wandb: {result['wandb_dir']}")
    return 0
