"""The report's figures as ``matplotlib.figure.Figure`` objects (no pyplot state, no backend
switch): the trade-off scatter (the paper's Figure 10) and the per-item image grids.

matplotlib is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framework.report.runs import is_ok, resolve_path
from framework.report.stats import Group, sort_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: axis labels of the scatter for known columns
AXIS_LABELS = {
    "lpips": "lpips (lower: structure preserved)",
    "clip_score": "clip_score (higher: prompt followed)",
    "shape_iou": "shape_iou (higher: structure preserved)",
    "color_reached": "color_reached (higher: prompt followed)",
    "attr_reached": "attr_reached (higher: prompt followed)",
}
#: side of one image cell of a grid, inches (at 100 dpi: 190 pixels)
GRID_CELL = 1.9


def scatter_figure(groups: list[Group], x: str, y: str) -> Figure | None:
    """y against x, one point per method setting (mean ± 95% CI bars), the settings of one
    method joined by a line and annotated with their parameter values; None if no group has
    finite means of both columns."""
    import matplotlib
    from matplotlib.figure import Figure

    by_method: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        mx, my = g.stats.get(x, (None,))[0], g.stats.get(y, (None,))[0]
        if mx is None or my is None or not (math.isfinite(mx) and math.isfinite(my)):
            continue
        by_method.setdefault((g.run.label, g.method), []).append(g)
    if not by_method:
        return None
    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    ax = fig.subplots()
    # one colour per method: tab10 up to 10 methods, tab20 beyond (tab10 would repeat colours)
    palette = "tab10" if len(by_method) <= 10 else "tab20"
    colors = matplotlib.colormaps[palette]
    for i, members in enumerate(by_method.values()):
        color = colors(i % colors.N)
        xs = [g.stats[x][0] for g in members]
        ys = [g.stats[y][0] for g in members]
        xe = [g.stats[x][1] or 0.0 for g in members]
        ye = [g.stats[y][1] or 0.0 for g in members]
        name = members[0].label.split(" (")[0]
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt="-o", color=color, label=name, capsize=2, lw=1.2, ms=5)
        for g, gx, gy in zip(members, xs, ys):
            text = ", ".join(v for _, v in g.params if v != "")
            if text:
                ax.annotate(text, (gx, gy), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    ax.set_title(f"{y} vs {x}: one point per method setting (mean ± 95% CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _load(path: Path | None) -> Any:
    """An image file as an (H, W, 3) array, None when missing or unreadable."""
    if path is None or not path.is_file():
        return None
    try:
        from framework.images import load_image

        return load_image(path)
    except Exception:  # a broken image shows as a placeholder
        return None


def grid_figure(groups: list[Group], item: str) -> Figure | None:
    """One row per target prompt of ``item``: the input, then each method setting's edit (its
    lowest seed's ok row; "failed"/"missing" placeholders otherwise). None if the item has no rows.
    Size: (1 + settings) × prompts cells of ``GRID_CELL`` inches, plus a title band."""
    from matplotlib.figure import Figure

    targets: list[str] = []
    input_path: Path | None = None
    for g in groups:
        for r in g.rows:
            if r.get("item_id") != item:
                continue
            if r.get("target_prompt", "") not in targets:
                targets.append(r.get("target_prompt", ""))
            if input_path is None or not input_path.is_file():
                input_path = resolve_path(g.run, r.get("input_path"))
    if not targets:
        return None
    cols = [g for g in groups if any(r.get("item_id") == item for r in g.rows)]
    source = _load(input_path)
    fig = Figure(figsize=(GRID_CELL * (len(cols) + 1), GRID_CELL * len(targets) + 0.5), dpi=100)
    axes = fig.subplots(len(targets), len(cols) + 1, squeeze=False)
    for i, target in enumerate(targets):
        cells: list[tuple[Any, str, str]] = [(source, "input" if i == 0 else "", "input missing")]
        for g in cols:
            rows = [r for r in g.rows if r.get("item_id") == item and r.get("target_prompt", "") == target]
            ok = sorted((r for r in rows if is_ok(r)), key=lambda r: sort_key(r.get("seed", "")))
            img = _load(resolve_path(g.run, ok[0].get("output_path"))) if ok else None
            note = "failed" if rows and not ok else "missing"
            title = "\n".join(textwrap.wrap(g.label, 28, break_long_words=False)) if i == 0 else ""
            cells.append((img, title, note))
        for j, (img, title, note) in enumerate(cells):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is not None:
                ax.imshow(img)
            else:
                ax.set_facecolor("#dddddd")
                ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=8, transform=ax.transAxes)
            if title:
                ax.set_title(title, fontsize=7)
            if j == 0:
                ax.set_ylabel("\n".join(textwrap.wrap(target, 22)), fontsize=7)
    fig.suptitle(f"item {item}", fontsize=9)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` (PNG by the suffix), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
