"""Grouping of results tables for the comparison report (pandas for the grouping and the
tables, scipy for Student's t). The statistics themselves (:func:`moments`,
:func:`ci_halfwidth`, :func:`summarize`) live in :mod:`framework.stats`, below both the report
and the runner, and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from framework.report.runs import Run, is_ok, parse_float
from framework.stats import (  # noqa: F401 (re-exported)
    CONFIDENCE,
    Moments,
    ci_halfwidth,
    moments,
    summarize,
    summary_columns,
    to_number,
)

if TYPE_CHECKING:
    import pandas as pd

#: direction of each known metric column in the table header (True: higher is better)
HIGHER_IS_BETTER = {
    "clip_score": True,
    "clip_score_edited": True,
    "psnr": True,
    "psnr_bg": True,
    "ssim": True,
    "ssim_bg": True,
    "diversity": True,
    "reconstruction_psnr": True,
    "lpips": False,
    "lpips_bg": False,
    "mse": False,
    "mse_bg": False,
    "structure_distance": False,
    "shape_iou": True,
    "color_reached": True,
    "attr_reached": True,
    "attr_kept": True,
    "attr_success": True,
}

def _opt(value: Any) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def mean_ci(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, 95% CI half-width, n) of the finite values; half-width None for n < 2."""
    import pandas as pd

    vals = [v for v in values if v is not None and math.isfinite(v)]
    m = moments(pd.DataFrame({"v": vals}, dtype=float), [0] * len(vals), 1)
    n = int(m.n.at[0, "v"])
    return _opt(m.mean.at[0, "v"]), _opt(float(ci_halfwidth(n, m.var.at[0, "v"]))), n


# ------------------------------------------------------------------- the report's groups
@dataclass
class Group:
    """The rows of one method setting: one run, one method, one combination of parameter values."""

    run: Run
    method: str
    params: tuple[tuple[str, str], ...]
    rows: list[dict[str, str]] = field(default_factory=list)
    label: str = ""
    #: per metric column: (mean, 95% CI half-width, n) over the ok rows' finite values
    stats: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return sum(not is_ok(r) for r in self.rows)

    @property
    def n_ok(self) -> int:
        return len(self.rows) - self.n_failed

    def param_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params if v != "")


def sort_key(value: str) -> tuple[int, float, str]:
    """Numbers first, by value, then texts."""
    f = parse_float(value)
    return (0, f, "") if f is not None else (1, 0.0, value)


def group_rows(runs: list[Run], param_cols: list[str], metric_cols: list[str]) -> list[Group]:
    """Groups in run order, then method order of first appearance, then sorted parameter values;
    each with its label and the statistics of every metric column."""
    import numpy as np
    import pandas as pd

    rows = [(i, row) for i, run in enumerate(runs) for row in run.rows]
    if not rows:
        return []
    # positional column names: a parameter column may be called anything
    keys = pd.DataFrame(
        [[i, row.get("method", "") or "(none)", *[(row.get(c) or "").strip() for c in param_cols]] for i, row in rows]
    )
    ids = keys.groupby(list(keys.columns), sort=False).ngroup().to_numpy()
    first = keys.drop_duplicates()  # one row per group, in group id order
    run_index = first[0].tolist()
    groups = [
        Group(run=runs[k[0]], method=k[1], params=tuple(zip(param_cols, k[2:])))
        for k in first.itertuples(index=False, name=None)
    ]
    for gid, (_, row) in zip(ids, rows):
        groups[gid].rows.append(row)

    ok = np.array([is_ok(row) for _, row in rows], dtype=bool)
    cells = pd.DataFrame(
        {m: [parse_float(row.get(m)) for _, row in rows] for m in metric_cols},
        index=pd.RangeIndex(len(rows)),
        dtype=float,
    )
    finite = cells.where(np.isfinite(cells.to_numpy()) & ok[:, None])
    stats = moments(finite, ids, len(groups))
    half = ci_halfwidth(stats.n.to_numpy(), stats.var.to_numpy())
    for gid, g in enumerate(groups):
        for j, m in enumerate(metric_cols):
            g.stats[m] = (_opt(stats.mean.iat[gid, j]), _opt(half[gid, j]), int(stats.n.iat[gid, j]))

    method_order = {k: i for i, k in enumerate(dict.fromkeys(zip(run_index, first[1])))}
    runs_of_method = keys.groupby(1)[0].nunique()
    order = sorted(
        range(len(groups)),
        key=lambda gid: (run_index[gid], method_order[(run_index[gid], groups[gid].method)],
                         [sort_key(v) for _, v in groups[gid].params]),
    )  # fmt: skip
    ordered = [groups[gid] for gid in order]
    for g in ordered:
        name = f"{g.run.label}/{g.method}" if runs_of_method[g.method] > 1 else g.method
        g.label = f"{name} ({g.param_text()})" if g.param_text() else name
    return ordered


# ----------------------------------------------------------------------------- the tables
def fmt(value: float | None) -> str:
    """4 significant digits (inf shown as inf; — for no value)."""
    if value is None:
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


Bounds = tuple[float | None, float | None]


def interval(
    stat: tuple[float | None, float | None, int], bounds: Bounds | None = None
) -> tuple[float, float] | None:
    """The confidence interval mean ± half-width, clipped to the column's ``bounds`` (low, high;
    None: no bound); None when there is no half-width (n < 2) or no mean."""
    mean, half, _ = stat
    if mean is None or half is None:
        return None
    low, high = mean - half, mean + half
    if bounds is not None:
        if bounds[0] is not None:
            low = max(low, bounds[0])
        if bounds[1] is not None:
            high = min(high, bounds[1])
    return low, high


def cell(stat: tuple[float | None, float | None, int], bounds: Bounds | None = None) -> str:
    """``mean ± half-width`` (the mean alone when n < 2; — when n = 0); ``mean [low, high]``
    when the interval reaches past the column's ``bounds`` and is clipped to them."""
    mean, half, _ = stat
    if mean is None:
        return "—"
    if half is None:
        return fmt(mean)
    low, high = interval(stat, bounds) or (mean, mean)
    if low > mean - half or high < mean + half:
        return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"
    return f"{fmt(mean)} ± {fmt(half)}"


def metric_header(name: str) -> str:
    """The column name with ↑ (higher is better) or ↓ when known."""
    higher = HIGHER_IS_BETTER.get(name)
    if higher is None and name.endswith(("_seconds", "_nfe")):
        higher = False
    return name + ("" if higher is None else (" ↑" if higher else " ↓"))


def comparison_table(
    groups: list[Group],
    runs: list[Run],
    param_cols: list[str],
    metric_cols: list[str],
    ranges: dict[str, Bounds] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """The table of method settings × metrics, every column: header and rows of display
    strings (intervals clipped to ``ranges``, column → (low, high))."""
    ranges = ranges or {}
    multi = len(runs) > 1
    header = (["run"] if multi else []) + ["method"] + param_cols + ["rows", "failed"]
    header += [metric_header(m) for m in metric_cols]
    body = []
    for g in groups:
        row = ([g.run.label] if multi else []) + [g.method] + [v for _, v in g.params]
        row += [str(len(g.rows)), str(g.n_failed)] + [cell(g.stats[m], ranges.get(m)) for m in metric_cols]
        body.append(row)
    return header, body


@dataclass
class TableLayout:
    """The comparison table as shown: only the columns that tell settings apart.

    ``key_columns``: how many leading columns name the setting (run, method, parameters);
    ``constant``: (column, value) of the columns left out because every setting has the same
    value; ``folded``: parameters given for some methods only, shown in the method cell."""

    header: list[str]
    body: list[list[str]]
    key_columns: int
    constant: list[tuple[str, str]]
    folded: list[str]


def table_layout(
    groups: list[Group],
    runs: list[Run],
    param_cols: list[str],
    metric_cols: list[str],
    ranges: dict[str, Bounds] | None = None,
    extra: dict[str, list[str]] | None = None,
) -> TableLayout:
    """The comparison table without columns that say nothing: a parameter without any value is
    left out, one with the same value everywhere is stated once (``constant``), as are counts and
    metrics equal for every setting; a parameter that only some methods have (blank for the
    others) goes into the method cell, ``method (key=value)``. ``extra``: more key columns
    (header → one cell per group) placed after the parameters."""
    header, body = comparison_table(groups, runs, param_cols, metric_cols, ranges)
    multi = len(runs) > 1
    first_param = 2 if multi else 1
    columns = [[row[j] for row in body] for j in range(len(header))]
    keep: list[int] = []
    constant: list[tuple[str, str]] = []
    folded: list[int] = []
    for j, name in enumerate(header):
        values = columns[j]
        is_param = first_param <= j < first_param + len(param_cols)
        if j == first_param - 1:  # the method column is always shown
            keep.append(j)
        elif is_param and all(v == "" for v in values):
            continue
        elif is_param and any(v == "" for v in values):
            folded.append(j)
        elif len(set(values)) == 1 and len(values) > 1:
            constant.append((name, values[0]))
        else:
            keep.append(j)
    method_col = first_param - 1
    rows = []
    for row in body:
        row = list(row)
        notes = [f"{header[j]}={row[j]}" for j in folded if row[j] != ""]
        if notes:
            row[method_col] += f" ({', '.join(notes)})"
        rows.append(row)
    key_columns = sum(1 for j in keep if j < first_param + len(param_cols))
    out_header = [header[j] for j in keep]
    out_body = [[row[j] for j in keep] for row in rows]
    for name, cells in (extra or {}).items():
        out_header.insert(key_columns, name)
        for row, value in zip(out_body, cells):
            row.insert(key_columns, value)
        key_columns += 1
    return TableLayout(out_header, out_body, key_columns, constant, [header[j] for j in folded])


def summary_frame(groups: list[Group], param_cols: list[str], metric_cols: list[str]) -> pd.DataFrame:
    """The report's ``summary.csv``: one row per method setting with counts, then mean, CI
    half-width and n of each metric (floats as ``repr``, so they read back exactly)."""
    import pandas as pd

    def num(value: float | None) -> str:
        return "" if value is None else repr(value)

    records = []
    for g in groups:
        rec: dict[str, Any] = {"run": g.run.label, "method": g.method, **dict(g.params), "label": g.label}
        rec |= {"rows": len(g.rows), "ok": g.n_ok, "failed": g.n_failed}
        for m in metric_cols:
            mean, half, n = g.stats[m]
            rec |= {f"{m}_mean": num(mean), f"{m}_ci95": num(half), f"{m}_n": n}
        records.append(rec)
    columns = ["run", "method", *param_cols, "label", "rows", "ok", "failed"]
    columns += [f"{m}_{s}" for m in metric_cols for s in ("mean", "ci95", "n")]
    return pd.DataFrame.from_records(records, columns=columns).astype(str)


def write_csv(frame: pd.DataFrame, path: Any) -> None:
    """``frame`` as a CSV file with the csv module's dialect (``\\r\\n`` line ends)."""
    frame.to_csv(path, index=False, lineterminator="\r\n")



# ----------------------------------------------------------------- shared inversion costs
#: the cost columns of an inversion (the ``time`` metric's), repeated on every row edited from it
INVERSION_COST_COLUMNS = ("inversion_seconds", "inversion_nfe")


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() not in ("false", "0", "no")


@dataclass
class SharedInversion:
    """The inversions of one run with one ``inversion_group`` value: one per item and seed index,
    each edited by every setting in ``members``; ``stats``: per cost column, (mean, 95% CI
    half-width, n) over those inversions, each counted once."""

    run: Run
    group: str
    number: int
    members: list[Group] = field(default_factory=list)
    not_needed: list[Group] = field(default_factory=list)
    stats: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)


def shared_inversions(groups: list[Group], cost_cols: Sequence[str]) -> list[SharedInversion]:
    """The runs' inversions by ``inversion_group`` (numbered from 1 in each run, in order of
    first appearance): which settings were edited from them, which of those do not need them
    (``inversion_needed`` false), and their cost columns counted once per (item, seed index) —
    the value of the first ok row with a finite one. Empty when no row has an inversion group;
    rows without one (a run written before the column) count as one inversion per setting
    (``group`` "": whether it was shared is not known)."""
    if not any((r.get("inversion_group") or "").strip() for g in groups for r in g.rows):
        return []
    found: dict[tuple[int, str], SharedInversion] = {}
    values: dict[tuple[int, str], dict[str, dict[tuple[str, str], float]]] = {}
    for g in groups:
        for r in g.rows:
            key = (id(g.run), (r.get("inversion_group") or "").strip() or f"setting {id(g)}")
            if key not in found:
                number = 1 + sum(k[0] == key[0] for k in found)
                found[key] = SharedInversion(g.run, (r.get("inversion_group") or "").strip(), number)
                values[key] = {c: {} for c in cost_cols}
            inv = found[key]
            if not any(m is g for m in inv.members):
                inv.members.append(g)
            if not _truthy(r.get("inversion_needed")) and not any(m is g for m in inv.not_needed):
                inv.not_needed.append(g)
            if not is_ok(r):
                continue
            unit = (r.get("item_id", ""), r.get("seed_index") or r.get("seed") or "")
            for c in cost_cols:
                v = parse_float(r.get(c))
                if v is not None and math.isfinite(v):
                    values[key][c].setdefault(unit, v)
    for key, inv in found.items():
        inv.stats = {c: mean_ci(list(values[key][c].values())) for c in cost_cols}
    return list(found.values())


def members_text(groups: Sequence[Group]) -> str:
    """Settings by method: ``ef_text ×4, ef_p2p``."""
    counts: dict[str, int] = {}
    for g in groups:
        name = g.label.split(" (")[0]
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(name if n == 1 else f"{name} ×{n}" for name, n in counts.items())
