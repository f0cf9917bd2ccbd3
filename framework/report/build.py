"""From run folders to a written comparison report: read, classify, group, draw, assemble the
report model once, render it to ``report.md`` and ``report.html`` (and optionally wandb)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framework.errors import InputError
from framework.report import figures, render, stats
from framework.report.runs import Run, choose_items, classify_columns, is_ok, read_run, safe_name, unique_labels
from framework.report.stats import Group

#: failed rows listed one by one in the report (the rest are counted)
FAILURES_SHOWN = 50


def default_out(run_dirs: Sequence[str | Path]) -> Path:
    """RUN_DIR/compare for one run; ``compare_<a>_vs_<b>`` beside the first run for several."""
    first = Path(run_dirs[0])
    if first.is_file():
        first = first.parent
    if len(run_dirs) == 1:
        return first / "compare"
    names = "_vs_".join(safe_name(Path(d).resolve().name) for d in run_dirs)
    return first.resolve().parent / f"compare_{names}"[:120]


def scatter_name(x: str, y: str) -> str:
    """The scatter's file name (``scatter_clip_lpips.png`` for the paper's axes)."""
    if (x, y) == ("lpips", "clip_score"):
        return "scatter_clip_lpips.png"
    return f"scatter_{safe_name(y)}_vs_{safe_name(x)}.png"


def _failed(row: dict[str, str]) -> bool:
    return not is_ok(row)


def report_model(
    runs: list[Run],
    groups: list[Group],
    param_cols: list[str],
    metric_cols: list[str],
    empty: list[str],
    axes: tuple[str, str],
    scatter: str | None,
    grids: dict[str, str],
) -> render.Section:
    """The report as a section tree: runs, the methods × metrics table, the scatter (``scatter``:
    its file relative to the report folder, None if not drawn), the grids (item → file)."""
    x, y = axes
    failures = [(run, r) for run in runs for r in run.rows if _failed(r)]
    total = sum(len(r.rows) for r in runs)
    header, body = stats.comparison_table(groups, runs, param_cols, metric_cols)

    doc = render.Section("Comparison report")
    doc.add(
        render.Text(["Runs:"]),
        render.Bullets(
            [[render.Code(run.label), f" ({run.path}): {len(run.rows)} rows, {sum(map(_failed, run.rows))} failed"]
             for run in runs]
        ),
    )  # fmt: skip
    table = render.Section("Methods × metrics").add(
        render.Text(
            [f"Mean ± half-width of the 95% confidence interval (Student's t) over the rows with status ok; "
             f"{total} rows, {len(failures)} failed. ↑ higher is better, ↓ lower is better."]
        ),
        render.Table(header, body, key="comparison"),
    )  # fmt: skip
    if empty:
        table.add(render.Text([f"Columns without any value (left out): {', '.join(empty)}."]))
    doc.add(table)
    trade_off = render.Section(f"{y} vs {x}")
    if scatter:
        trade_off.add(render.Image(scatter, f"{y} vs {x}", key=f"{y}_vs_{x}"))
    else:
        trade_off.add(render.Text([f"(no scatter: the results have no values in both {x} and {y})"]))
    doc.add(trade_off)
    grid_section = render.Section("Image grids")
    for item, src in grids.items():
        grid_section.add(render.Section(item).add(render.Image(src, item, key=f"grid/{item}")))
    if not grids:
        grid_section.add(render.Text(["(no items chosen)"]))
    doc.add(grid_section)
    if failures:

        def setting(r: dict[str, str]) -> str:
            text = ", ".join(f"{c}={r.get(c)}" for c in param_cols if (r.get(c) or "").strip())
            return f" ({text})" if text else ""

        def failure(run: Run, r: dict[str, str]) -> list[render.Inline]:
            reason = r.get("error", "") or "(no reason recorded)"
            return [
                render.Code(run.label), " item ", render.Code(r.get("item_id", "")), " method ",
                render.Code(r.get("method", "")), f"{setting(r)} target “{r.get('target_prompt', '')}”: {reason}",
            ]  # fmt: skip

        lines: list[Sequence[render.Inline]] = [failure(run, r) for run, r in failures[:FAILURES_SHOWN]]
        if len(failures) > FAILURES_SHOWN:
            lines.append([f"… and {len(failures) - FAILURES_SHOWN} more"])
        doc.add(render.Section("Failed rows").add(render.Bullets(lines)))
    return doc


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
    if not run_dirs:
        raise InputError("give at least one RUN_DIR")
    runs = [read_run(d) for d in run_dirs]
    unique_labels(runs)
    axes = next((r.config["compare"] for r in runs if isinstance((r.config or {}).get("compare"), dict)), {})
    x = x or str(axes.get("x") or "lpips")
    y = y or str(axes.get("y") or "clip_score")
    if not any(r.rows for r in runs):
        raise InputError(f"no rows in {', '.join(str(r.path / 'results.csv') for r in runs)}")
    out = Path(out) if out else default_out(run_dirs)
    from framework.outputs import check_output_dir, make_output_dir

    check_output_dir(out, "report folder")
    make_output_dir(out, "report folder")
    metric_cols, param_cols = classify_columns(runs, metrics, params)
    groups = stats.group_rows(runs, param_cols, metric_cols)
    empty = [m for m in metric_cols if not any(g.stats[m][2] for g in groups)]
    metric_cols = [m for m in metric_cols if m not in empty]  # e.g. *_bg columns of a run without masks

    summary_csv = out / "summary.csv"
    stats.write_csv(stats.summary_frame(groups, param_cols, metric_cols), summary_csv)
    scatter = out / scatter_name(x, y)
    fig = figures.scatter_figure(groups, x, y) if x in metric_cols and y in metric_cols else None
    if fig is not None:
        figures.save(fig, scatter)
    elif scatter.exists():  # of an earlier report in this folder
        scatter.unlink()
    has_scatter = fig is not None
    grids: dict[str, Path] = {}
    for item in choose_items(runs, items, sample, seed):
        fig = figures.grid_figure(groups, item)
        if fig is not None:
            grids[item] = figures.save(fig, out / "grids" / f"grid_{safe_name(item)}.png")

    doc = report_model(
        runs, groups, param_cols, metric_cols, empty, (x, y), scatter.name if has_scatter else None,
        {item: path.relative_to(out).as_posix() for item, path in grids.items()},
    )  # fmt: skip
    report_md = out / "report.md"
    report_md.write_text(render.to_markdown(doc), encoding="utf-8")
    report_html = out / "report.html"
    report_html.write_text(render.to_html(doc), encoding="utf-8")
    result: dict[str, Any] = {
        "out": out,
        "report_md": report_md,
        "report_html": report_html,
        "summary_csv": summary_csv,
        "scatter": scatter if has_scatter else None,
        "grids": grids,
        "groups": groups,
        "metric_columns": metric_cols,
        "param_columns": param_cols,
        "wandb_dir": None,
    }
    if wandb:
        name = "compare-" + "+".join(r.label for r in runs)[:100]
        result["wandb_dir"] = render.to_wandb(doc, out, wandb, name, {"runs": [str(r.path) for r in runs]})
    return result
