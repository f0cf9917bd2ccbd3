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
from framework.report.stats import Bounds, Group, interval, sort_key

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


def _errors(members: list[Group], col: str, bounds: Bounds | None) -> list[list[float]]:
    """matplotlib's asymmetric error bars [[below...], [above...]]: the 95% intervals clipped to ``bounds``."""
    below, above = [], []
    for g in members:
        mean = g.stats[col][0]
        low, high = interval(g.stats[col], bounds) or (mean, mean)
        below.append(max(mean - low, 0.0))
        above.append(max(high - mean, 0.0))
    return [below, above]


def point_labels(members: list[Group]) -> list[str]:
    """What tells a method's settings apart: the parameters whose values differ between them,
    as ``key=value`` (the last part of a dotted key); "" for a method with one setting."""
    if len(members) < 2:
        return ["" for _ in members]
    keys = [k for k, _ in members[0].params]
    varying = [k for k in keys if len({dict(g.params).get(k, "") for g in members}) > 1]
    return [", ".join(f"{k.split('.')[-1]}={v}" for k, v in g.params if k in varying and v != "") for g in members]


#: where a label may go: beside its point (left or right, ``LABEL_GAP`` points away), or farther
#: away, up or down in steps of a label's height, nearest first; a label away from its point is
#: joined to it by a thin line
LABEL_GAP, LABEL_SIDES, LABEL_ROWS = 5.0, (5.0, 30.0, 60.0, 95.0), 14


def _label_offsets(height: float) -> list[tuple[float, float]]:
    """Candidate offsets (points) of a label ``height`` points high, nearest first."""
    rows = [k * (height + 1.0) for k in range(-LABEL_ROWS, LABEL_ROWS + 1)]
    offsets = [(side * sign, dy) for side in LABEL_SIDES for sign in (1, -1) for dy in rows]
    return sorted(offsets, key=lambda o: (math.hypot(*o), -o[0]))


def place_labels(fig: Figure, ax: Any, labels: list[tuple[str, float, float, Any]]) -> list[Any]:
    """Annotate each (text, x, y, colour) near its point where it overlaps no other label and
    no point, inside the axes: the nearest free offset of ``_label_offsets``; when none is free,
    the one with the least overlap. Returns the annotations."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    frame = ax.get_window_extent(renderer)
    px_per_pt = fig.dpi / 72
    pad = 4.0 * px_per_pt  # a marker's half size
    boxes: list[tuple[float, float, float, float]] = []
    for _, x, y, _ in labels:
        px, py = ax.transData.transform((x, y))
        boxes.append((px - pad, py - pad, px + pad, py + pad))

    def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    out = []
    for text, x, y, color in labels:
        if not text:
            continue
        probe = ax.annotate(text, (x, y), fontsize=7)
        size = probe.get_window_extent(renderer)
        probe.remove()
        w, h = size.width, size.height
        px, py = ax.transData.transform((x, y))
        best: tuple[float, tuple[float, float], tuple[float, float, float, float]] | None = None
        for dx, dy in _label_offsets(h / px_per_pt):
            x0 = px + dx * px_per_pt - (w if dx < 0 else 0.0)
            y0 = py + dy * px_per_pt - h / 2
            box = (x0, y0, x0 + w, y0 + h)
            inside = overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1))
            cost = sum(overlap(box, b) for b in boxes) + 10 * (w * h - inside)
            if best is None or cost < best[0]:
                best = (cost, (dx, dy), box)
            if cost == 0:
                break
        assert best is not None
        _, (dx, dy), box = best
        line = {"arrowstyle": "-", "color": color, "lw": 0.5, "alpha": 0.6} if (abs(dx), dy) != (LABEL_GAP, 0) else None
        out.append(ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, color=color,
                               ha="left" if dx > 0 else "right", va="center", arrowprops=line))  # fmt: skip
        boxes.append(box)
    return out


def scatter_figure(
    groups: list[Group], x: str, y: str, ranges: dict[str, Bounds] | None = None
) -> Figure | None:
    """y against x, one point per method setting (mean and 95% CI bars, clipped to the columns'
    ``ranges``), the settings of one method joined by a line and labelled with the parameter
    values that tell them apart (placed so that labels do not overlap); the legend beside the
    axes. None if no group has finite means of both columns."""
    import matplotlib
    from matplotlib.figure import Figure

    ranges = ranges or {}
    by_method: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        mx, my = g.stats.get(x, (None,))[0], g.stats.get(y, (None,))[0]
        if mx is None or my is None or not (math.isfinite(mx) and math.isfinite(my)):
            continue
        by_method.setdefault((g.run.label, g.method), []).append(g)
    if not by_method:
        return None
    fig = Figure(figsize=(8.0, 5.0), dpi=120)
    ax = fig.subplots()
    # one colour per method: tab10 up to 10 methods, tab20 beyond (tab10 would repeat colours)
    palette = "tab10" if len(by_method) <= 10 else "tab20"
    colors = matplotlib.colormaps[palette]
    labels: list[tuple[str, float, float, Any]] = []
    for i, members in enumerate(by_method.values()):
        color = colors(i % colors.N)
        xs = [g.stats[x][0] for g in members]
        ys = [g.stats[y][0] for g in members]
        name = members[0].label.split(" (")[0]
        ax.errorbar(xs, ys, xerr=_errors(members, x, ranges.get(x)), yerr=_errors(members, y, ranges.get(y)),
                    fmt="-o", color=color, label=name, capsize=2, lw=1.2, ms=5)  # fmt: skip
        labels += [(text, gx, gy, color) for text, gx, gy in zip(point_labels(members), xs, ys)]
    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    ax.set_title(f"{y} vs {x}: one point per method setting (mean, 95% CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.margins(0.08)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    place_labels(fig, ax, labels)
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


def short_titles(groups: list[Group]) -> dict[int, str]:
    """id(group) → its method and the parameters that tell it apart from the method's other
    settings (``ef_text (skip=0, guidance_scale=7.5)``; the method alone for a single setting)."""
    by_method: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        by_method.setdefault((g.run.label, g.method), []).append(g)
    titles = {}
    for members in by_method.values():
        for g, text in zip(members, point_labels(members)):
            name = g.label.split(" (")[0]
            titles[id(g)] = f"{name} ({text})" if text else name
    return titles


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
    titles = short_titles(cols)
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
            title = "\n".join(textwrap.wrap(titles[id(g)], 28, break_long_words=False)) if i == 0 else ""
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
