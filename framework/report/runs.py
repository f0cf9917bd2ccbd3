"""Run folders as the report reads them: their results tables, configs and column roles.

A run folder holds ``results.csv`` (one row per item × method setting × target prompt × seed,
string cells) and, when ``editfriendly run`` wrote it, ``config.yaml``. An interrupted run has no
``results.csv`` yet; its finished rows are read from ``parts/rows-*.jsonl``, merged as the
runner's final merge would.

Which columns are metrics and which are parameters: given explicitly, or detected. A column is a
*metric* when a registered metric declares it, when it ends in ``_seconds`` or ``_nfe``, or when
it is numeric and not a parameter; it is a *parameter* when a run's ``config.yaml`` sweeps it,
when its name has a dot (``editor.guidance_scale``), or when it is a method setting such as
``skip`` or ``num_steps``.

Nothing here imports pandas, scipy or matplotlib.
"""

from __future__ import annotations

import csv
import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.errors import InputError
from framework.naming import slug

log = logging.getLogger(__name__)

#: the columns every results.csv has (not metrics, not parameters)
FIXED_COLUMNS = (
    "item_id",
    "method",
    "target_prompt",
    "source_prompt",
    "seed",
    "status",
    "error",
    "output_path",
    "input_path",
    "reconstruction_path",
    # the runner's bookkeeping columns
    "variant",
    "setting",
    "target_index",
    "seed_index",
    "inversion_group",
    "inversion_needed",
)
#: columns the runner copies from dataset items (``data.editing_type_id``, ...): neither kind
DATA_PREFIX = "data."
#: method settings that are parameters even when no config says they are swept
METHOD_SETTINGS = ("num_steps", "skip", "seeds", "eta", "guidance_scale", "inverter", "editor")
#: cell texts that mean "no value"
MISSING = ("", "none", "null", "nan", "na", "n/a")


@dataclass
class Run:
    """One run folder: its rows (dicts of string cells), their header and, if present, its config."""

    path: Path
    label: str
    header: list[str]
    rows: list[dict[str, str]]
    config: dict[str, Any] | None = None


def parse_float(text: Any) -> float | None:
    """A cell as a float; empty, None, NaN and unparsable cells give None (inf stays inf)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value = float(text)
        return None if math.isnan(value) else value
    s = str(text).strip()
    if s.lower() in MISSING:
        return None
    try:
        value = float(s)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def is_ok(row: dict[str, str]) -> bool:
    """Whether a row succeeded (status ``ok``; a missing status counts as ok)."""
    status = (row.get("status") or "ok").strip().lower()
    return status in ("ok", "success", "done")


def read_run(path: str | Path) -> Run:
    """Read ``RUN_DIR/results.csv`` (or a results.csv file; part files of an interrupted run) and
    ``config.yaml`` when there. Raises InputError naming the path when it is not a run."""
    path = Path(path)
    if path.is_file() and path.name.endswith(".csv"):
        csv_path, path = path, path.parent
    else:
        csv_path = path / "results.csv"
    if not path.exists():
        raise InputError(f"run directory not found: {path}")
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = [dict(r) for r in reader]
    elif csv_path.name == "results.csv" and list((path / "parts").glob("rows-*.jsonl")):
        header, rows = read_part_files(path)
        log.warning(
            "%s has no results.csv (an interrupted run): read the %d finished rows of its part files", path, len(rows)
        )
    else:
        raise InputError(
            f"{path} is not a run directory: it has no results.csv and no parts/rows-*.jsonl (give "
            "directories written by `editfriendly run`, or a results.csv file)"
        )
    missing = [c for c in ("item_id", "method") if c not in header]
    if missing:
        raise InputError(
            f"{csv_path} lacks the column(s) {', '.join(missing)}; a results table needs at least "
            f"item_id and method, and normally has {', '.join(FIXED_COLUMNS)}"
        )
    for r in rows:  # short rows give None values
        for k in list(r):
            if r[k] is None:
                r[k] = ""
    return Run(path=path, label=path.resolve().name or str(path), header=header, rows=rows, config=read_config(path))


def read_config(path: Path) -> dict[str, Any] | None:
    """The run's ``config.yaml`` (else ``config.resolved.yaml``) as a plain dict, unresolved; None
    when absent or unreadable (it is optional context: a warning is logged)."""
    for name in ("config.yaml", "config.resolved.yaml"):
        if (path / name).is_file():
            try:
                from omegaconf import OmegaConf

                loaded = OmegaConf.to_container(OmegaConf.load(path / name), resolve=False)
                return loaded if isinstance(loaded, dict) else None
            except Exception as exc:  # the config is optional context
                log.warning("could not read %s: %s", path / name, exc)
                return None
    return None


def read_part_files(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The rows of an unfinished run, merged from its per-rank part files as the runner's final
    merge would (one row per key, the last ok one winning), as a header and string cells."""
    from framework.tables import columns_for, csv_cell, merge_rows, read_rows

    rows = merge_rows(read_rows(path))
    header = columns_for(rows, [], [])

    def text(value: Any) -> str:  # the runner's CSV cell rule
        out = csv_cell(value)
        return "" if out is None else str(out)

    return header, [{c: text(r.get(c)) for c in header} for r in rows]


def unique_labels(runs: list[Run]) -> None:
    """Make run labels distinct (parent/name, then a counter)."""
    seen: dict[str, int] = {}
    for run in runs:
        if sum(r.label == run.label for r in runs) > 1:
            run.label = f"{run.path.resolve().parent.name}/{run.path.resolve().name}"
    for run in runs:
        if run.label in seen:
            seen[run.label] += 1
            run.label = f"{run.label}#{seen[run.label]}"
        else:
            seen[run.label] = 1


def resolve_path(run: Run, value: str | None) -> Path | None:
    """An image path from the table: absolute as is, else relative to the run folder."""
    if not value or str(value).strip().lower() in MISSING:
        return None
    p = Path(str(value).strip()).expanduser()
    return p if p.is_absolute() else run.path / p


def safe_name(text: str) -> str:
    """``text`` as a file name part (letters, digits, ``_.-``; at most 80 characters)."""
    return slug(text, style="report")


# ------------------------------------------------------------------------- column roles
def registered_metric_columns() -> set[str]:
    """Every column that a registered metric fills with its default options."""
    from framework.registry import METRICS

    cols: set[str] = set()
    for name in METRICS.names():
        cls = METRICS.get(name)
        cols.update(getattr(cls, "columns", ()) or ())
        try:
            cols.update(METRICS.build(name).columns)
        except Exception:  # a metric that needs options just contributes its class columns
            pass
    return cols


def metric_ranges(columns: Iterable[str] = ()) -> dict[str, tuple[float | None, float | None]]:
    """(low, high) of each column whose range is known (None: no bound): what the registered
    metrics declare (``Metric.ranges``), and [0, ∞) for costs (``*_seconds``, ``*_nfe``)."""
    from framework.registry import METRICS

    ranges: dict[str, tuple[float | None, float | None]] = {
        c: (0.0, None) for c in columns if c.endswith(("_seconds", "_nfe"))
    }
    for name in METRICS.names():
        for col, (low, high) in (getattr(METRICS.get(name), "ranges", None) or {}).items():
            ranges[col] = (None if low is None else float(low), None if high is None else float(high))
    return ranges


def swept_parameters(runs: Iterable[Run]) -> set[str]:
    """Keys under ``methods[*].sweep`` in the runs' configs."""
    keys: set[str] = set()
    for run in runs:
        methods = (run.config or {}).get("methods") or []
        if isinstance(methods, dict):
            methods = list(methods.values())
        for method in methods:
            if isinstance(method, dict) and isinstance(method.get("sweep"), dict):
                keys.update(str(k) for k in method["sweep"])
    return keys


def classify_columns(
    runs: list[Run], metrics: Sequence[str] | None = None, params: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """(metric columns, parameter columns) in first-seen order (see the module docstring)."""
    header: list[str] = []
    for run in runs:
        header += [c for c in run.header if c not in header]
    for option, given in (("--metrics", metrics), ("--params", params)):
        unknown = [c for c in given or () if c not in header]
        if unknown:
            raise InputError(f"{option}: no column {', '.join(unknown)} in the results; columns: {', '.join(header)}")
    rest = [c for c in header if c not in FIXED_COLUMNS and not c.startswith(DATA_PREFIX)]
    if params is not None:
        param_cols = list(params)
    else:
        swept = swept_parameters(runs)
        param_cols = [
            c for c in rest if c in swept or "." in c or c in METHOD_SETTINGS or c.split(".")[-1] in METHOD_SETTINGS
        ]
    if metrics is not None and len(metrics):
        return list(metrics), [c for c in param_cols if c not in metrics]
    known = registered_metric_columns()
    metric_cols = []
    for c in rest:
        if c in param_cols:
            continue
        if c in known or c.endswith(("_seconds", "_nfe")):
            metric_cols.append(c)
            continue
        present = [v for run in runs for r in run.rows if str(v := r.get(c, "")).strip().lower() not in MISSING]
        if present and all(parse_float(v) is not None for v in present):
            metric_cols.append(c)
    return metric_cols, param_cols


def choose_items(runs: list[Run], items: Sequence[str] | None, sample: int, seed: int) -> list[str]:
    """The item ids for the grids: ``items`` (checked) or ``sample`` of them drawn with ``seed``."""
    known: list[str] = []
    for run in runs:
        for r in run.rows:
            if r.get("item_id", "") not in known:
                known.append(r.get("item_id", ""))
    if items:
        unknown = [i for i in items if i not in known]
        if unknown:
            shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            raise InputError(f"--items: no item {', '.join(unknown)} in the results; known items: {shown}")
        return list(items)
    if sample <= 0 or not known:
        return []
    if sample >= len(known):
        return known
    picked = set(random.Random(seed).sample(known, sample))
    return [i for i in known if i in picked]


def wandb_logger(runs: Iterable[Run]) -> dict[str, Any]:
    """The first run config's ``logger`` section when it configures wandb, else {}."""
    for run in runs:
        logger = (run.config or {}).get("logger")
        if isinstance(logger, dict) and logger.get("name") == "wandb":
            return logger
    return {}
