"""From run folders to a written comparison report: read, classify, group, draw, assemble the
report model once, render it to ``report.md`` and ``report.html`` (and optionally wandb)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framework.errors import InputError
from framework.report import figures, render, stats
from framework.report.runs import (
    Run,
    choose_items,
    classify_columns,
    is_ok,
    metric_ranges,
    read_run,
    safe_name,
    unique_labels,
)
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
    ranges: dict[str, stats.Bounds] | None = None,
) -> render.Section:
    """The report as a section tree: runs, the methods × metrics table, the cost of shared
    inversions, the scatter (``scatter``: its file relative to the report folder, None if not
    drawn), the grids (item → file). ``ranges``: column → (low, high) that intervals are clipped to."""
    x, y = axes
    failures = [(run, r) for run in runs for r in run.rows if _failed(r)]
    total = sum(len(r.rows) for r in runs)
    ranges = ranges or {}
    cost_cols = [c for c in stats.INVERSION_COST_COLUMNS if c in metric_cols]
    inversions = stats.shared_inversions(groups, cost_cols) if cost_cols else []
    shared = cost_cols if inversions else []
    extra: dict[str, list[str]] = {}
    if shared:
        cells = [inversion_cell(g, inversions) for g in groups]
        if len(set(cells)) > 1 or len(cells) == 1:
            extra["inversion"] = cells
    layout = stats.table_layout(groups, runs, param_cols, [m for m in metric_cols if m not in shared], ranges, extra)

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
             f"{total} rows, {len(failures)} failed. ↑ higher is better, ↓ lower is better. Where the interval "
             "reaches past the values a metric can take (e.g. [0, 1] for a rate) it is clipped to them and "
             "shown as mean [low, high]."]
        ),
        render.Table(layout.header, layout.body, key="comparison", key_columns=layout.key_columns),
    )  # fmt: skip
    if layout.constant:
        same = ", ".join(f"{name} = {value}" for name, value in layout.constant)
        table.add(render.Text([f"The same for every setting (not shown as columns): {same}."]))
    if layout.folded:
        table.add(render.Text([f"Set for some methods only, so shown beside the method: {', '.join(layout.folded)}."]))
    if empty:
        table.add(render.Text([f"Columns without any value (left out): {', '.join(empty)}."]))
    if cost_cols and not shared:
        table.add(render.Text(
            [f"{' and '.join(cost_cols)}: each setting's inversion in full. These results do not say which settings "
             "shared one inversion (no inversion_group column), so an inversion shared by several settings is "
             "counted once for each of them."]
        ))  # fmt: skip
    doc.add(table)
    if shared:
        doc.add(cost_section(runs, inversions, shared, ranges))
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


def inversion_cell(g: Group, inversions: list[stats.SharedInversion]) -> str:
    """The inversion(s) a setting was edited from, by number; "not needed" when its method uses none."""
    parts = [
        f"{inv.number}" + (" (not needed)" if any(m is g for m in inv.not_needed) else "")
        for inv in inversions
        if any(m is g for m in inv.members)
    ]
    return ", ".join(parts) or "—"


def cost_section(
    runs: list[Run], inversions: list[stats.SharedInversion], cost_cols: list[str], ranges: dict[str, stats.Bounds]
) -> render.Section:
    """The cost of the runs' inversions, each counted once, and who shares them."""
    multi = len(runs) > 1
    any_unneeded = any(inv.not_needed for inv in inversions)
    header = (["run"] if multi else []) + ["inversion", "settings edited from it"]
    header += (["not needed by"] if any_unneeded else []) + ["inversions"]
    header += [stats.metric_header(c) for c in cost_cols]
    body = []
    for inv in inversions:
        members = stats.members_text(inv.members) if inv.group else f"{inv.members[0].label} (sharing not recorded)"
        row = ([inv.run.label] if multi else []) + [str(inv.number), members]
        row += [stats.members_text(inv.not_needed)] if any_unneeded else []
        row += [str(inv.stats[cost_cols[0]][2])]
        row += [stats.cell(inv.stats[c], ranges.get(c)) for c in cost_cols]
        body.append(row)
    section = render.Section("Cost of the inversions").add(
        render.Text(
            ["Settings with the same inverter settings and steps share one inversion of each item and seed (computed "
             "once, down to the smallest skip among them). Each inversion is counted once here: mean ± 95% interval "
             "over the inversions. The rows of results.csv repeat its cost on every setting edited from it, and the "
             "methods × metrics table leaves it out; its inversion column names the inversion each setting used."]
        ),
        render.Table(header, body, key="inversions", key_columns=2 if multi else 1),
    )  # fmt: skip
    for run in runs:
        mine = [inv for inv in inversions if inv.run is run]
        if "inversion_nfe" not in cost_cols or not mine or not all(inv.group for inv in mine):
            continue
        once = sum(inv.stats["inversion_nfe"][0] or 0.0 for inv in mine)
        repeated = sum((inv.stats["inversion_nfe"][0] or 0.0) * len(inv.members) for inv in mine)
        unneeded = sum(
            (inv.stats["inversion_nfe"][0] or 0.0) for inv in mine if len(inv.not_needed) == len(inv.members)
        )
        text = (
            f"{len(mine)} inversion{'s' if len(mine) != 1 else ''} per item and seed, {stats.fmt(once)} network "
            f"evaluations counted once ({stats.fmt(repeated)} when counted for every setting, as the rows repeat it)"
        )
        if unneeded:
            text += f"; {stats.fmt(unneeded)} of them for inversions no setting needs"
        parts: list[render.Inline] = [text[0].upper() + text[1:] + "."]
        if multi:
            parts = [render.Code(run.label), f": {text}."]
        section.add(render.Text(parts))
    if any_unneeded:
        section.add(render.Text(
            ["Not needed by: these methods start from the encoded input alone (SDEdit noises it afresh) and use none "
             "of the inversion's noise maps; the inversion was computed because they share the run's inverter "
             "settings, and its cost is not a cost of the method."]
        ))  # fmt: skip
    return section


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
    ranges = metric_ranges(metric_cols)

    summary_csv = out / "summary.csv"
    stats.write_csv(stats.summary_frame(groups, param_cols, metric_cols), summary_csv)
    scatter = out / scatter_name(x, y)
    fig = figures.scatter_figure(groups, x, y, ranges) if x in metric_cols and y in metric_cols else None
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
        {item: path.relative_to(out).as_posix() for item, path in grids.items()}, ranges,
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
