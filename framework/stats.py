"""Statistics of results tables, shared by an experiment's ``summary.csv``
(:mod:`framework.experiment`) and the comparison report (:mod:`framework.report`), which do not
import each other.

Both statistics add values as Python's ``sum`` does (left to right; compensated from Python
3.12), applied per group by pandas: so a mean or a standard deviation here is bit-for-bit the
one the plain-Python code before them computed (``mean = sum / n``, ``var = sum((x - mean)²) /
(n - 1)``), and ``summary.csv`` files stay byte-identical. pandas' own ``mean``/``std`` use other
summation orders and differ in the last bit for about half of all groups.

pandas and scipy are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pandas as pd

#: confidence level of the intervals in the report
CONFIDENCE = 0.95


# --------------------------------------------------------------------------- the statistics
def to_number(value: Any) -> float:
    """``float(value)``; NaN for what is not a number (None, bool, "", text, NaN)."""
    if value is None or isinstance(value, bool) or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _python_sum(values: pd.Series) -> float:
    """The values added as Python's ``sum`` adds floats (see the module docstring)."""
    return sum(values.tolist())


class Moments(NamedTuple):
    """Per group (rows) and column (columns): count, mean and sample variance (ddof=1) of the
    non-NaN values; mean NaN where n = 0, variance NaN where n < 2."""

    n: pd.DataFrame
    mean: pd.DataFrame
    var: pd.DataFrame


def moments(values: pd.DataFrame, groups: Sequence[int], n_groups: int) -> Moments:
    """Moments of each column of ``values`` (float cells, NaN = missing; shape (rows, columns))
    per group; ``groups[i]`` in ``range(n_groups)`` is row i's group. Frames are (n_groups, columns)."""
    import numpy as np
    import pandas as pd

    ids = pd.Series(np.asarray(groups, dtype=np.int64), index=values.index)
    index = pd.RangeIndex(n_groups)
    n, mean, var = {}, {}, {}
    for col in values.columns:
        v = values[col].dropna()
        g = ids.loc[v.index]
        n[col] = v.groupby(g).count().reindex(index, fill_value=0)
        mean[col] = v.groupby(g).agg(_python_sum).reindex(index) / n[col]
        # float_power is C pow(), as Python's ``**`` (numpy's ``**2`` is x*x: another last bit)
        dev = np.float_power(v - mean[col].to_numpy()[g.to_numpy()], 2)
        var[col] = dev.groupby(g).agg(_python_sum).reindex(index) / (n[col] - 1).where(n[col] > 1)
    return Moments(pd.DataFrame(n, index=index), pd.DataFrame(mean, index=index), pd.DataFrame(var, index=index))


def ci_halfwidth(n: Any, var: Any, confidence: float = CONFIDENCE) -> Any:
    """Half-width of the two-sided Student's t confidence interval of a mean of ``n`` values with
    sample variance ``var`` (arrays or scalars; NaN where n < 2)."""
    import numpy as np
    from scipy.stats import t

    n = np.asarray(n, dtype=float)
    df = np.where(n > 1, n - 1, np.nan)
    return t.ppf(0.5 + confidence / 2, df) * np.sqrt(np.asarray(var, dtype=float) / n)



# --------------------------------------------------------- an experiment's summary.csv
def summarize(
    rows: Sequence[dict[str, Any]], sweep: Sequence[str], metric_columns: Sequence[str]
) -> list[dict[str, Any]]:
    """Per (method, variant, setting), in order of first appearance: the first row's sweep keys,
    ``num_steps`` and ``skip``, the counts ``rows``/``ok``/``failed``, and for each metric
    column ``<col>_mean``, ``<col>_std`` (ddof=1; 0.0 for one value) and ``<col>_n`` over the
    rows with status ``ok`` whose cell is a number (inf counts; None, "", NaN, bools, text do not).

    ``rows`` are the runner's merged result rows (dicts of JSON values); the entries are what
    ``summary_columns`` names, with None for no value."""
    import numpy as np
    import pandas as pd

    if not rows:
        return []
    keys = pd.DataFrame([[r["method"], r["variant"], r["setting"]] for r in rows], dtype=object)
    ids = keys.groupby([0, 1, 2], sort=False, dropna=False).ngroup().to_numpy()
    n_groups = int(ids.max()) + 1
    ok = np.array([r.get("status") == "ok" for r in rows], dtype=bool)
    values = pd.DataFrame(
        {c: [to_number(r.get(c)) for r in rows] for c in metric_columns}, index=pd.RangeIndex(len(rows)), dtype=float
    )
    stats = moments(values.where(np.broadcast_to(ok[:, None], values.shape)), ids, n_groups)
    n_rows = np.bincount(ids, minlength=n_groups)
    n_ok = np.bincount(ids, weights=ok, minlength=n_groups).astype(int)
    first = [rows[i] for i in np.unique(ids, return_index=True)[1]]
    out = []
    for gid, r in enumerate(first):
        entry: dict[str, Any] = {
            "method": r["method"],
            "variant": r["variant"],
            "setting": r["setting"],
            **{k: r.get(k) for k in sweep if k in r},
            "num_steps": r.get("num_steps"),
            "skip": r.get("skip"),
            "rows": int(n_rows[gid]),
            "ok": int(n_ok[gid]),
            "failed": int(n_rows[gid] - n_ok[gid]),
        }
        for col in metric_columns:
            n = int(stats.n.at[gid, col])
            entry[f"{col}_mean"] = float(stats.mean.at[gid, col]) if n else None
            entry[f"{col}_std"] = math.sqrt(stats.var.at[gid, col]) if n > 1 else (0.0 if n == 1 else None)
            entry[f"{col}_n"] = n
        out.append(entry)
    return out


def summary_columns(sweep: Sequence[str], metric_columns: Sequence[str]) -> list[str]:
    """The columns of an experiment's ``summary.csv`` (the keys of ``summarize``'s entries)."""
    cols = ["method", "variant", "setting"] + [k for k in sweep if k not in ("num_steps", "skip")]
    cols += ["num_steps", "skip", "rows", "ok", "failed"]
    for col in metric_columns:
        cols += [f"{col}_mean", f"{col}_std", f"{col}_n"]
    return cols
