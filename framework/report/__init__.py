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

from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
